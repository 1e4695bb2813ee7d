"""Single-file checkpoints: training from a `model.ckpt` offline, and the model hash the embedding records."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.ldm_checkpoint import config_only_copy, ldm_state_dict
from tests.test_train import make_images
from textinv import hashing
from textinv.cli import app
from textinv.formats.files import load_embedding
from textinv.models.loading import load_pipeline

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tiny_model_dir, tmp_path_factory):
    """The tiny model as an original-layout `model.ckpt` (with a Lightning-style wrapper), and a config folder."""
    folder = tmp_path_factory.mktemp("ckpt")
    pipe = load_pipeline(tiny_model_dir, device="cpu")
    torch.save({"state_dict": ldm_state_dict(pipe), "global_step": 7}, folder / "model.ckpt")
    return folder / "model.ckpt", config_only_copy(tiny_model_dir, folder / "config")


def _train_args(tmp_path, images, *extra: str) -> list[str]:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"resolution": 32, "batch_size": 2},
        "train": {"max_steps": 2, "seed": 1},
        "log": {"save_every": 0, "image_every": 0, "formats": ["pt", "bin", "safetensors"]},
    }))
    return ["train", str(images), "--init-word", "cat", "--placeholder", "<cat>", "--config", str(cfg),
            "--out", str(tmp_path / "logs"), *extra]


def test_train_from_a_ckpt_offline_with_model_config(tmp_path, ckpt):
    model, config = ckpt
    images = make_images(tmp_path / "cat")
    res = runner.invoke(app, _train_args(tmp_path, images, "--model", str(model)))
    assert res.exit_code == 1 and "--model-config" in res.output  # offline, nothing cached: says what to pass
    res = runner.invoke(app, _train_args(tmp_path, images, "--model", str(model), "--model-config", str(config)))
    assert res.exit_code == 0, res.output
    (run_dir,) = (tmp_path / "logs").iterdir()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"] == {"source": str(model), "prediction_type": None, "config": str(config), "family": "SD1.x"}

    # the model's hash, as AUTOMATIC1111 computes it, is in every format that has room for it (not .bin: a
    # plain {token: tensor} dict), and travels through convert and merge
    model_hash = hashing.model_hash(model)
    for name in ("cat.pt", "cat.safetensors"):
        emb = load_embedding(run_dir / "embeddings" / name)
        assert (emb.base_model_hash, emb.base_model) == (model_hash, model.stem), name  # its name, not its path
    assert load_embedding(run_dir / "embeddings" / "cat.safetensors").init_words == {"<cat>": "cat"}
    converted = tmp_path / "converted.safetensors"
    assert runner.invoke(app, ["convert", str(run_dir / "embeddings" / "cat.pt"), str(converted)]).exit_code == 0
    assert load_embedding(converted).base_model_hash == model_hash


def test_merge_keeps_the_base_model_hash(tmp_path):
    from textinv.formats.embedding import Embedding, Token
    from textinv.formats.files import save_embedding

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path, name in ((a, "<a>"), (b, "<b>")):
        save_embedding(Embedding(tokens=[Token(name=name, vectors=torch.ones(1, 8))], base_model="model",
                                 base_model_hash="c1a4629432", init_words={name: "cat"}), path)
    merged = tmp_path / "merged.pt"  # two tokens: the paper layout
    assert runner.invoke(app, ["merge", str(a), str(b), "-o", str(merged)]).exit_code == 0
    emb = load_embedding(merged)
    assert (emb.base_model, emb.base_model_hash) == ("model", "c1a4629432")
