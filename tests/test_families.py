"""Which family is a model or an embedding: the one width table (formats/families.py), the one function for a
loaded pipeline (models/loading.py), the one module that reads it from files (models/peek.py), and the config's
allowed families, all from the same table."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from textinv import config
from textinv.errors import ConfigError
from textinv.formats.families import CONFIG_FOR, FAMILIES, describe, family_for
from textinv.models import peek
from textinv.models.loading import encoder_widths, model_family


@pytest.mark.parametrize(("dims", "family", "text"), [
    ((768, None), "SD1.x", "SD1.x (768-dim)"),
    ((1024, None), "SD2.x", "SD2.x (1024-dim)"),
    ((768, 1280), "SDXL", "SDXL (768+1280-dim)"),
    ((64, None), "textinv toy", "textinv toy (64-dim)"),
    ((96, None), "unknown (dim 96)", "96-dim (no known family)"),
    ((32, 64), "unknown (dims 32+64)", "32+64-dim (no known family)"),
    ((1280, 768), "unknown (dims 1280+768)", "1280+768-dim (no known family)"),
    ((768, 1024), "unknown (dims 768+1024)", "768+1024-dim (no known family)"),
])
def test_the_widths_name_the_family(dims, family, text):
    assert family_for(*dims) == family
    assert describe(*dims) == text


def test_the_config_offers_the_families_with_a_packaged_config():
    assert CONFIG_FOR == {"SD1.x": "v1-finetune", "SD2.x": "v2-finetune", "SDXL": "sdxl-finetune",
                          "SD3": "sd3-finetune", "Flux.1": "flux-finetune"}  # issue 22 added SD3 and Flux.1
    assert config.CHOICES["model.family"] == (None, "SD1.x", "SD2.x", "SDXL", "SD3", "Flux.1")
    for family, name in CONFIG_FOR.items():  # each packaged config says the family it is for
        assert config.load_config(name).model.family == family
    with pytest.raises(ConfigError, match=r"it must be one of .*SD1\.x \| SD2\.x \| SDXL \| SD3 \| Flux\.1"):
        config.build_config(None, ["model.family=textinv toy"])
    assert {f.name for f in FAMILIES} - set(CONFIG_FOR) == {"textinv toy"}


def _pipe(*widths: int):
    def encoder(w):
        return SimpleNamespace(get_input_embeddings=lambda: SimpleNamespace(weight=torch.zeros(3, w)))

    second = encoder(widths[1]) if len(widths) > 1 else None
    return SimpleNamespace(text_encoder=encoder(widths[0]), text_encoder_2=second)


def test_a_loaded_pipelines_widths_and_family():
    assert (encoder_widths(_pipe(768)), model_family(_pipe(768))) == ((768, None), "SD1.x")
    assert (encoder_widths(_pipe(768, 1280)), model_family(_pipe(768, 1280))) == ((768, 1280), "SDXL")
    assert model_family(_pipe(32, 64)) == "unknown (dims 32+64)"


def test_peek_tells_sdxl_from_model_index_and_checkpoint_keys(tmp_path):
    assert peek.is_sdxl_index({"_class_name": "StableDiffusionXLPipeline"})
    assert peek.is_sdxl_index({"_class_name": "DiffusionPipeline", "text_encoder_2": ["transformers", "CLIP"]})
    assert not peek.is_sdxl_index({"_class_name": "StableDiffusionPipeline", "text_encoder": ["x", "y"]})
    assert peek.is_sdxl_checkpoint(["model.diffusion_model.x", "conditioner.embedders.1.model.ln_final.weight"])
    assert not peek.is_sdxl_checkpoint(["cond_stage_model.transformer.text_model.final_layer_norm.weight"])
    folder = tmp_path / "xl"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert peek.default_config(str(folder)) == "sdxl-finetune"
    assert peek.default_config(None) == "v1-finetune"
    assert peek.default_config(str(tmp_path / "nothing")) == "v1-finetune"
