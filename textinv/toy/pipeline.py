"""Build a complete, randomly initialised Stable-Diffusion-shaped pipeline from real diffusers/transformers classes.

The tests use a tiny one; the shipped toy model is a larger one of the same shape, trained on the toy world.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from textinv.toy.tokenizer import write_clip_tokenizer


@dataclass
class PipelineShape:
    """Sizes of each part. The defaults make a pipeline of a few hundred kB that runs a step in milliseconds."""

    text_dim: int = 32
    text_layers: int = 2
    text_heads: int = 2
    unet_channels: tuple[int, ...] = (16, 32)
    unet_layers_per_block: int = 1
    unet_head_dim: int = 8
    vae_channels: tuple[int, ...] = (8, 16)
    latent_channels: int = 4
    norm_groups: int = 4
    resolution: int = 32
    prediction_type: str = "epsilon"


def build_pipeline(
    words: list[str], folder: str | Path | None = None, *, shape: PipelineShape | None = None, seed: int = 0
) -> StableDiffusionPipeline:
    """A random pipeline whose tokenizer knows `words`; saved as a diffusers folder when `folder` is given."""
    shape = shape or PipelineShape()
    torch.manual_seed(seed)
    tok_dir = Path(folder) / "tokenizer" if folder else Path(_tmpdir()) / "tokenizer"
    tokenizer = write_clip_tokenizer(words, tok_dir)
    text_encoder = CLIPTextModel(_text_config(tokenizer, shape, shape.text_dim))
    unet = _unet(shape, shape.text_dim)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(shape.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(shape.vae_channels),
        block_out_channels=shape.vae_channels,
        latent_channels=shape.latent_channels,
        norm_num_groups=shape.norm_groups,
        sample_size=shape.resolution,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=shape.prediction_type,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if folder:
        pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


def _text_config(tokenizer, shape: PipelineShape, width: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=width * 4,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        max_position_embeddings=77,
        projection_dim=width,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _unet(shape: PipelineShape, cross_attention_dim: int, **extra) -> UNet2DConditionModel:
    n = len(shape.unet_channels)
    return UNet2DConditionModel(
        sample_size=shape.resolution // 2 ** (len(shape.vae_channels) - 1),
        in_channels=shape.latent_channels,
        out_channels=shape.latent_channels,
        block_out_channels=shape.unet_channels,
        layers_per_block=shape.unet_layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=shape.unet_head_dim,
        norm_num_groups=shape.norm_groups,
        **extra,
    )


def _tmpdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="textinv-tok-")


def build_sdxl_pipeline(
    words: list[str], folder: str | Path | None = None, *, shape: PipelineShape | None = None, seed: int = 0,
    text_dim_2: int | None = None,
):
    """A random SDXL-shaped pipeline: two CLIP text encoders of different widths (the second with a projection, for
    the pooled embedding), a UNet with `addition_embed_type="text_time"` and cross-attention over both widths."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    shape = shape or PipelineShape()
    base = build_pipeline(words, shape=shape, seed=seed)
    dim_2 = text_dim_2 or shape.text_dim * 2
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(base.tokenizer, shape, dim_2))
    time_dim = 8
    unet = _unet(shape, shape.text_dim + dim_2, use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=time_dim,
                 projection_class_embeddings_input_dim=6 * time_dim + dim_2)  # six size/crop ids + the pooled one
    tokenizer_2 = write_clip_tokenizer(words, Path(folder) / "tokenizer_2" if folder else Path(_tmpdir()) / "tok2")
    tokenizer_2.pad_token = "!"  # as SDXL's second tokenizer: the two pad differently, so each must tokenize
    pipe = StableDiffusionXLPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=base.tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=base.scheduler,
        force_zeros_for_empty_prompt=True,
    )
    if folder:
        pipe.save_pretrained(folder, safe_serialization=True)
    return pipe
