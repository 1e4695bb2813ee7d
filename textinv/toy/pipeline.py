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
    tokenizer = _tokenizer(write_clip_tokenizer, words, folder, "tokenizer")
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


def _tokenizer(write, words: list[str], folder: str | Path | None, sub: str):
    """`write(words, folder/sub)`: into the pipeline's folder when it has one, else into a temporary folder that is
    removed once the tokenizer is loaded (a pipeline built in memory leaves nothing behind in the temp dir)."""
    if folder:
        return write(words, Path(folder) / sub)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="textinv-tok-") as tmp:
        return write(words, Path(tmp) / sub)


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
    tokenizer_2 = _tokenizer(write_clip_tokenizer, words, folder, "tokenizer_2")
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


T5_DIM = 48  # the tiny T5's width: unlike the tiny CLIPs' (32, 64), so every part's width tells its encoder


def _t5(words: list[str], folder: Path | None, width: int = T5_DIM):
    """A tiny T5 encoder and its tokenizer; the table has spare rows past the tokenizer, as T5-XXL's 32128 rows do
    past its 32100 tokens."""
    from transformers import T5Config, T5EncoderModel

    from textinv.toy.tokenizer import write_t5_tokenizer

    tokenizer = _tokenizer(write_t5_tokenizer, words, folder, "")
    config = T5Config(vocab_size=len(tokenizer) + 28, d_model=width, d_kv=8, d_ff=width * 2, num_layers=2,
                      num_heads=2, is_encoder_decoder=False, decoder_start_token_id=0)
    return T5EncoderModel(config), tokenizer


def _flow_vae(shape: PipelineShape, shift: float, scale: float, channels: int = 16) -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(shape.vae_channels),
                         up_block_types=("UpDecoderBlock2D",) * len(shape.vae_channels),
                         block_out_channels=shape.vae_channels, latent_channels=channels,
                         norm_num_groups=shape.norm_groups, sample_size=shape.resolution, shift_factor=shift,
                         scaling_factor=scale)


def _clip_encoders(words: list[str], folder: Path | None, widths: tuple[int, ...], projection: bool,
                   shape: PipelineShape, eos_token_id: int | None):
    """Tiny CLIP text encoders (with the projection SD3's pooled vector needs) and their tokenizers, one per width;
    the second tokenizer pads with "!" as OpenCLIP-bigG's does. `eos_token_id` overrides the configs' (2 is what
    Stable Diffusion's published CLIP configs say)."""
    from transformers import CLIPTextModelWithProjection

    out = []
    for k, width in enumerate(widths):
        sub = "tokenizer" if k == 0 else f"tokenizer_{k + 1}"
        tokenizer = _tokenizer(write_clip_tokenizer, words, folder, sub)
        if k:
            tokenizer.pad_token = "!"
        config = _text_config(tokenizer, shape, width)
        if eos_token_id is not None:
            config.eos_token_id = eos_token_id
        out.append(((CLIPTextModelWithProjection if projection else CLIPTextModel)(config), tokenizer))
    return out


def build_sd3_pipeline(words: list[str], folder: str | Path | None = None, *, shape: PipelineShape | None = None,
                       seed: int = 0, t5: bool = True, eos_token_id: int | None = None, latent_channels: int = 16):
    """A random SD3-shaped pipeline: CLIP-L-like (32) and bigG-like (64) encoders with projections, a T5 encoder
    (48; `t5=False` leaves it out, as SD3 allows), an MMDiT over 16-channel latents (`latent_channels`) in 2x2
    patches, a VAE with a latent shift, and the flow-matching scheduler with SD3's shift of 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    shape = shape or PipelineShape()
    torch.manual_seed(seed)
    folder = Path(folder) if folder else None
    (te, tok), (te2, tok2) = _clip_encoders(words, folder, (32, 64), True, shape, eos_token_id)
    te3, tok3 = _t5(words, folder / "tokenizer_3" if folder else None) if t5 else (None, None)
    latent_side = shape.resolution // 2 ** (len(shape.vae_channels) - 1)
    transformer = SD3Transformer2DModel(sample_size=latent_side, patch_size=2, in_channels=latent_channels,
                                        num_layers=1, attention_head_dim=8, num_attention_heads=2,
                                        joint_attention_dim=T5_DIM, caption_projection_dim=16,
                                        pooled_projection_dim=32 + 64, out_channels=latent_channels,
                                        pos_embed_max_size=latent_side)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=_flow_vae(shape, 0.0609, 1.5305, latent_channels), text_encoder=te, tokenizer=tok,
                                    text_encoder_2=te2, tokenizer_2=tok2, text_encoder_3=te3, tokenizer_3=tok3)
    if folder:
        pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


def build_flux_pipeline(words: list[str], folder: str | Path | None = None, *, shape: PipelineShape | None = None,
                        seed: int = 0, eos_token_id: int | None = None):
    """A random Flux.1-dev-shaped pipeline: a CLIP-L-like encoder (32; its pooled output only), a T5 encoder (48),
    a guidance-distilled transformer over packed 16-channel latents, a VAE with a latent shift, and the
    flow-matching scheduler that shifts by image size, with Flux.1-dev's settings."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    shape = shape or PipelineShape()
    torch.manual_seed(seed)
    folder = Path(folder) if folder else None
    ((te, tok),) = _clip_encoders(words, folder, (32,), False, shape, eos_token_id)
    te2, tok2 = _t5(words, folder / "tokenizer_2" if folder else None)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_DIM,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=_flow_vae(shape, 0.1159, 0.3611), text_encoder=te, tokenizer=tok,
                        text_encoder_2=te2, tokenizer_2=tok2, transformer=transformer)
    if folder:
        pipe.save_pretrained(folder, safe_serialization=True)
    return pipe
