"""Randomly initialised SD3.5 and Flux.1 pipelines of the published architectures, saved as diffusers folders in
bf16, at a chosen transformer depth (`blocks`) and T5 depth (`t5_layers`), for bench/flow_step.py.

The widths are the real ones, read off the published configs: SD3.5-medium's MMDiT (24 blocks of 24 heads x 64,
dual attention in the first 13, RMS q/k norm, 384 positions), SD3.5-large's (38 blocks of 38 x 64), Flux.1-dev's
transformer (19 double-stream and 38 single-stream blocks of 24 heads x 128, guidance input, RoPE 16/56/56), their
16-channel VAE (128-512, shift and scale), CLIP-L (768, 12 layers, projection for SD3), OpenCLIP-bigG (1280, 32
layers) and T5-XXL v1.1 (4096, 24 layers of 64 heads, gated GELU, 32128 rows for 32100 tokens). A full-size
Flux.1-dev transformer is 12B parameters (24 GB in bf16) and T5-XXL 4.8B: they do not fit this machine's memory
next to other work, so the bench builds fewer blocks (and T5 layers: T5's outputs are cached, so its depth costs
only the caching pass and its weights) and extrapolates per block (bench/flow_step.py says how).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

CACHE = Path(tempfile.gettempdir()) / "textinv-bench"
WORDS = ["cat", "a", "photo", "of", "the"]
CLIP_VOCAB, T5_TOKENS, T5_ROWS = 49408, 32100, 32128

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              hidden_act="gelu", projection_dim=1280)
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, feed_forward_proj="gated-gelu",
              is_encoder_decoder=False, decoder_start_token_id=0)
VAE16 = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512],
             down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
             layers_per_block=2, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False)
SHAPES = {
    "sd3.5-medium": dict(kind="sd3", blocks=24, transformer=dict(
        patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64, num_attention_heads=24,
        joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
        qk_norm="rms_norm", sample_size=128), vae=dict(scaling_factor=1.5305, shift_factor=0.0609)),
    "sd3.5-large": dict(kind="sd3", blocks=38, transformer=dict(
        patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64, num_attention_heads=38,
        joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048, pos_embed_max_size=192,
        qk_norm="rms_norm", sample_size=128), vae=dict(scaling_factor=1.5305, shift_factor=0.0609)),
    "flux-dev": dict(kind="flux", blocks=19 + 38, transformer=dict(
        patch_size=1, in_channels=64, attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
        pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        vae=dict(scaling_factor=0.3611, shift_factor=0.1159)),
}


def depth(shape: str, blocks: int) -> dict:
    """The transformer's block counts for `blocks` blocks: SD3's `num_layers` (its first 13 with dual attention, as
    SD3.5-medium's); Flux.1's double and single blocks in the full model's 1:2 ratio (at least one double)."""
    if SHAPES[shape]["kind"] == "sd3":
        dual = tuple(range(min(blocks, 13))) if shape == "sd3.5-medium" else ()
        return {"num_layers": blocks, "dual_attention_layers": dual}
    double = max(1, round(blocks / 3))
    return {"num_layers": double, "num_single_layers": blocks - double}


def build(shape: str, blocks: int, t5_layers: int = 2) -> Path:
    """The cached folder of `shape` with `blocks` transformer blocks and `t5_layers` T5 layers (built on first use)."""
    folder = CACHE / f"{shape}-{blocks}-{t5_layers}"
    if (folder / "model_index.json").is_file():
        return folder
    tmp = folder.with_suffix(".tmp")
    _build(shape, blocks, t5_layers, tmp)
    tmp.rename(folder)
    return folder


def _build(shape: str, blocks: int, t5_layers: int, folder: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from random_models import _pad_vocab
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    from textinv.toy.tokenizer import write_clip_tokenizer, write_t5_tokenizer

    spec = SHAPES[shape]
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # build in bf16: a float32 copy of these would not fit here
    try:
        def clip(cls, sub, dims):
            write_clip_tokenizer(WORDS, folder / sub)
            _pad_vocab(folder / sub)
            from transformers import CLIPTokenizer

            tok = CLIPTokenizer.from_pretrained(folder / sub)
            if sub == "tokenizer_2":
                tok.pad_token = "!"
            config = CLIPTextConfig(vocab_size=CLIP_VOCAB, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                    eos_token_id=2, pad_token_id=tok.pad_token_id, **dims)  # SD's configs say 2
            return cls(config), tok

        t5_sub = "tokenizer_3" if spec["kind"] == "sd3" else "tokenizer_2"
        t5_tok = write_t5_tokenizer(WORDS + [f"w{i}" for i in range(T5_TOKENS - 200)], folder / t5_sub)
        t5 = T5EncoderModel(T5Config(vocab_size=T5_ROWS, num_layers=t5_layers, **T5_XXL))
        vae = AutoencoderKL(**VAE16, **spec["vae"])
        if spec["kind"] == "sd3":
            te, tok = clip(CLIPTextModelWithProjection, "tokenizer", CLIP_L)
            te2, tok2 = clip(CLIPTextModelWithProjection, "tokenizer_2", CLIP_G)
            transformer = SD3Transformer2DModel(**spec["transformer"], **depth(shape, blocks))
            pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                            vae=vae, text_encoder=te, tokenizer=tok, text_encoder_2=te2,
                                            tokenizer_2=tok2, text_encoder_3=t5, tokenizer_3=t5_tok)
        else:
            te, tok = clip(CLIPTextModel, "tokenizer", CLIP_L)
            transformer = FluxTransformer2DModel(**spec["transformer"], **depth(shape, blocks))
            scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
            pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=te, tokenizer=tok, text_encoder_2=t5,
                                tokenizer_2=t5_tok, transformer=transformer)
        pipe.save_pretrained(folder, safe_serialization=True)
    finally:
        torch.set_default_dtype(torch.float32)


def parameters(folder: Path) -> dict[str, float]:
    """Billions of parameters of each saved module (bf16: 2 bytes each)."""
    return {sub.name: sum(f.stat().st_size for f in sub.glob("*.safetensors")) / 2 / 1e9
            for sub in sorted(folder.iterdir()) if sub.is_dir() and list(sub.glob("*.safetensors"))}
