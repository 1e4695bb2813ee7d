"""Shared fixtures: a tiny Stable Diffusion pipeline built from real diffusers/transformers classes, and the
real embedding files in ../shared/fixtures/real-embeddings/."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The test models are tiny: one thread is faster than two fighting over a shared 2-core machine.
torch.set_num_threads(1)

REAL_EMBEDDINGS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-embeddings"

# The tiny tokenizer's vocabulary: every other word is spelled byte by byte.
TINY_WORDS = ["a", "photo", "of", "the", "cat", "dog", "toy", "painting", "style", "in", "rendering", "sculpture"]


@pytest.fixture(scope="session")
def real_embeddings() -> Path:
    if not REAL_EMBEDDINGS.is_dir():
        pytest.skip(f"real embedding fixtures not found at {REAL_EMBEDDINGS} (../shared beside the project)")
    return REAL_EMBEDDINGS


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny SD1-shaped pipeline (32-dim text encoder, 32 px) saved as a diffusers folder."""
    from textinv.toy.pipeline import build_pipeline

    folder = tmp_path_factory.mktemp("tiny-sd")
    build_pipeline(TINY_WORDS, folder, seed=0)
    return folder


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    """A tiny SDXL-shaped pipeline saved as a diffusers folder: `text_encoder` 32 wide, `text_encoder_2` (with a
    projection) 64 wide, a UNet with `addition_embed_type="text_time"` over both, a tiny VAE; 32 px."""
    from textinv.toy.pipeline import build_sdxl_pipeline

    folder = tmp_path_factory.mktemp("tiny-sdxl")
    build_sdxl_pipeline(TINY_WORDS, folder, seed=0)
    return folder


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """No test reads or writes the user's caches or reaches the network."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("TEXTINV_MODEL", raising=False)
    monkeypatch.delenv("TEXTINV_DEBUG", raising=False)


@pytest.fixture(scope="session")
def tiny_clip_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny CLIP (CLIPModel + CLIPProcessor) saved to a folder, as `textinv eval --clip` loads it."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")
    torch.manual_seed(1)
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=77, **layers),
                        vision_config=dict(image_size=32, patch_size=8, **layers), projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dino_dir(tmp_path_factory) -> Path:
    """A tiny DINO-style ViT (ViTModel without pooler + its image processor) saved to a folder."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("tiny-dino")
    torch.manual_seed(2)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                       num_attention_heads=2)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory) -> Path:
    """A tiny SD3-shaped pipeline saved as a diffusers folder: CLIP encoders 32 and 64 wide (with projections), a
    T5 encoder 48 wide with a sentencepiece tokenizer built with `tokenizers`, an MMDiT, a 16-channel VAE; 32 px."""
    from textinv.toy.pipeline import build_sd3_pipeline

    folder = tmp_path_factory.mktemp("tiny-sd3")
    build_sd3_pipeline(TINY_WORDS, folder, seed=0)
    return folder


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory) -> Path:
    """A tiny Flux.1-dev-shaped pipeline saved as a diffusers folder: a CLIP encoder 32 wide, a T5 encoder 48 wide, a
    guidance-distilled transformer over packed 16-channel latents; 32 px."""
    from textinv.toy.pipeline import build_flux_pipeline

    folder = tmp_path_factory.mktemp("tiny-flux")
    build_flux_pipeline(TINY_WORDS, folder, seed=0)
    return folder
