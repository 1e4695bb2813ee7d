"""Randomly initialised Stable Diffusion pipelines for the benchmarks, saved as diffusers folders.

The cost of a step does not depend on the weights, so a random model of the real architecture measures what the
real one would. `small` is SD1.x's layout at a fraction of the width (fast enough for CPU rounds); `sd15` and `sd2`
are the published architectures' configs: SD1.5 (CLIP ViT-L text encoder, 768 wide, 12 layers; the 320-1280 UNet
with 8 heads; the 128-512 VAE) and SD2 (OpenCLIP ViT-H text encoder, 1024 wide, 23 layers as SD2 ships it; the UNet
with head dims 5/10/20/20 and linear projections; v-prediction). `sdxl` is SDXL base 1.0's (both text encoders,
the text_time UNet, the 1024 px VAE), one folder for every resolution.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

CACHE = Path(tempfile.gettempdir()) / "textinv-bench"
VOCAB = 49408  # CLIP's
WORDS = ["cat", "a", "photo", "of", "the"]

# small: the toy builder's knobs (textinv.toy.pipeline.PipelineShape)
SMALL = dict(text_dim=256, text_layers=4, text_heads=4, unet_channels=(64, 128, 256), unet_layers_per_block=1,
             unet_head_dim=32, vae_channels=(32, 64, 128, 128), norm_groups=32)

_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
            norm_num_groups=32, scaling_factor=0.18215)
_UNET = dict(in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
             down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, norm_num_groups=32)
SD = {
    "sd15": dict(
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  hidden_act="quick_gelu", projection_dim=768),
        unet=dict(_UNET, cross_attention_dim=768, attention_head_dim=8),
        prediction_type="epsilon",
    ),
    "sd2": dict(
        text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                  hidden_act="gelu", projection_dim=512),
        unet=dict(_UNET, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True),
        prediction_type="v_prediction",
    ),
}
# SDXL base 1.0's published configs (stabilityai/stable-diffusion-xl-base-1.0: unet/, text_encoder/, text_encoder_2/,
# vae/, scheduler/ config.json): CLIP ViT-L and OpenCLIP ViT-bigG (32 layers, 1280 wide, projected pooled output);
# the 320-640-1280 UNet with 1/2/10 transformer layers, 2048-wide cross-attention and the text_time embedding of
# the pooled text and six size/crop ids; the 1024 px VAE (scaling 0.13025); Euler, 1000 steps.
SDXL = dict(
    text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768),
    text_2=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                hidden_act="gelu", projection_dim=1280),
    unet=dict(in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280], layers_per_block=2,
              down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
              up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
              transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
              use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
              projection_class_embeddings_input_dim=2816, norm_num_groups=32),
)
SHAPES = ["small", *SD, "sdxl"]


def build_model(shape: str, resolution: int) -> Path:
    """The cached folder of a random `shape` pipeline (built on first use) with CLIP's 49,408-token vocabulary. The
    SDXL folder serves every resolution (its configs say 1024 px, as the real one's do)."""
    folder = CACHE / (f"{shape}-{resolution}" if shape != "sdxl" else shape)
    if (folder / "model_index.json").is_file():
        return folder
    tmp = folder.with_suffix(".tmp")
    if shape == "small":
        _build_small(tmp, resolution)
    elif shape == "sdxl":
        _build_sdxl(tmp)
    else:
        _build_sd(tmp, shape, resolution)
    tmp.rename(folder)
    return folder


def weights_mib(folder: Path) -> float:
    """The model's own weights (text encoder, UNet, VAE), in MiB."""
    return sum(f.stat().st_size for f in folder.glob("*/*.safetensors")) / 2**20


def _pad_vocab(tokenizer_dir: Path) -> None:
    """Pad the vocabulary to CLIP's 49,408 entries (tokens no text reaches), so that a tokenizer and an embedding
    matrix of the real size (and an optimizer over that matrix) cost what they cost on a real model."""
    vocab_path = tokenizer_dir / "vocab.json"
    vocab = json.loads(vocab_path.read_text())
    for i in range(VOCAB - len(vocab)):
        vocab[f"pad{i}</w>"] = len(vocab)
    vocab_path.write_text(json.dumps(vocab))
    (tokenizer_dir / "tokenizer.json").unlink(missing_ok=True)  # rebuilt from vocab.json + merges.txt on load


def _build_small(folder: Path, resolution: int) -> None:
    from transformers import CLIPTextModel

    from textinv.toy.pipeline import PipelineShape, build_pipeline

    build_pipeline(WORDS, folder, shape=PipelineShape(resolution=resolution, **SMALL), seed=0)
    _pad_vocab(folder / "tokenizer")
    te = CLIPTextModel.from_pretrained(folder / "text_encoder")
    te.resize_token_embeddings(VOCAB)
    te.save_pretrained(folder / "text_encoder")


def _build_sd(folder: Path, shape: str, resolution: int) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from textinv.toy.tokenizer import write_clip_tokenizer

    spec = SD[shape]
    torch.manual_seed(0)
    write_clip_tokenizer(WORDS, folder / "tokenizer")
    _pad_vocab(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **spec["text"]))
    unet = UNet2DConditionModel(sample_size=resolution // 8, **spec["unet"])
    vae = AutoencoderKL(sample_size=resolution, **_VAE)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=spec["prediction_type"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)


def _build_sdxl(folder: Path) -> None:
    """SDXL's components one at a time, each saved and dropped before the next (the UNet alone is 10 GB in float32,
    built and written in about 11 GB)."""
    import gc

    import diffusers
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from textinv.toy.tokenizer import write_clip_tokenizer

    torch.manual_seed(0)
    for sub, pad in (("tokenizer", None), ("tokenizer_2", "!")):  # SDXL's second tokenizer pads with "!"
        write_clip_tokenizer(WORDS, folder / sub)
        _pad_vocab(folder / sub)
        if pad:
            tok = CLIPTokenizer.from_pretrained(folder / sub)
            tok.pad_token = pad
            tok.save_pretrained(folder / sub)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    ids = dict(vocab_size=VOCAB, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    parts = [("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**ids, **SDXL["text"]))),
             ("text_encoder_2", lambda: CLIPTextModelWithProjection(CLIPTextConfig(**ids, **SDXL["text_2"]))),
             ("vae", lambda: AutoencoderKL(**dict(_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True))),
             ("unet", lambda: UNet2DConditionModel(sample_size=128, **SDXL["unet"]))]
    for name, make in parts:
        module = make()
        module.save_pretrained(folder / name, safe_serialization=True, max_shard_size="20GB")
        del module
        gc.collect()
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                           timestep_spacing="leading", prediction_type="epsilon").save_pretrained(folder / "scheduler")
    index = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": diffusers.__version__,
             "force_zeros_for_empty_prompt": True, "feature_extractor": [None, None], "image_encoder": [None, None],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers",
                                                                                  "CLIPTextModelWithProjection"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
