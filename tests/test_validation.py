"""Validation while training: the fixed-draw validation loss, validation prompts, eval_every and early stop."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from textinv import config as cfgmod
from textinv.errors import ConfigError
from textinv.runs import Run
from textinv.training.loop import train

from .test_train import library_config, make_images, read_losses


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / "my_cat")


def test_validation_loss_is_logged_and_leaves_training_unchanged(tmp_path, tiny_model_dir, images, tiny_clip_dir):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    off = train(library_config(tmp_path / "a", tiny_model_dir, images, "log.val_loss_every=0", "log.image_every=0"))
    on = train(library_config(tmp_path / "b", tiny_model_dir, images, "log.val_loss_every=2", "log.image_every=3",
                              "log.prompts=['a painting of *', '* in the style']", "log.negative_prompt=dog",
                              "log.eval_every=3", f"log.eval_clip={tiny_clip_dir}"))
    # its own generator: the training draws, and so the losses, are the same with and without it
    assert read_losses(on.run_dir) == read_losses(off.run_dir)
    assert not (off.run_dir / "validation.csv").exists()
    rows = Run.open(on.run_dir).validation_losses()
    assert [s for s, _ in rows] == [2, 4, 6]
    assert all(v > 0 for _, v in rows)

    grid = Image.open(on.run_dir / "images" / "validation_gs-000003.png")
    # num_images columns, one row per prompt, each picture shown at 128 px or more (issue 23; was 32 px)
    assert grid.size[0] >= 2 * 128 and grid.size[1] >= 2 * 128
    assert "a painting of *; * in the style" in grid.text["Description"]
    assert (on.run_dir / "images" / "validation_gs-000006.png").is_file()

    results = json.loads((on.run_dir / "eval.json").read_text())
    assert [r["label"] for r in results["rows"]] == ["init word (cat)", "step 3", "step 6"]
    assert all(r["identity_clip"] is not None and r["editability"] is not None for r in results["rows"])
    assert results["best"]["step"] in (3, 6)


def test_the_validation_loss_is_the_same_for_the_same_embedding(tmp_path, tiny_model_dir, images):
    from textinv.training import validation

    seen = []
    original = validation.Validation.loss

    def twice(self):
        first, second = original(self), original(self)
        seen.append((first, second))
        return first

    mp = pytest.MonkeyPatch()
    mp.setattr(validation.Validation, "loss", twice)
    try:
        train(library_config(tmp_path, tiny_model_dir, images, "log.val_loss_every=3", "log.image_every=0"))
    finally:
        mp.undo()
    assert len(seen) == 2 and all(a == b for a, b in seen)
    assert seen[0][0] != seen[1][0]  # training moved the embedding, and the loss with it


def test_early_stop_when_the_validation_loss_stops_improving(tmp_path, tiny_model_dir, images):
    # a learning rate of ~0 leaves the embedding, and so the validation loss, unchanged: no improvement
    cfg = library_config(tmp_path, tiny_model_dir, images, "log.val_loss_every=1", "train.early_stop=2",
                         "optim.learning_rate=1e-30", "log.image_every=0", "train.max_steps=20")
    result = train(cfg)
    assert result.step == 3  # step 1 sets the best; steps 2 and 3 do not improve on it
    assert result.embedding_path.is_file()


def test_early_stop_needs_the_validation_loss():
    with pytest.raises(ConfigError, match="log.val_loss_every"):
        cfgmod.build_config(None, ["train.early_stop=3", "log.val_loss_every=0"])
