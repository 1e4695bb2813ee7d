"""Image logs large enough to judge and labelled, a conditioning sheet that is not blank, a loss.png with a legend
and axes that is redrawn at every checkpoint, Ctrl-C's included (issue 23)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from textinv.pictures import MIN_TILE, SHEET_SIDE, labelled_sheet
from textinv.training import loop as trainmod

from .test_train import _InterruptAt, library_config, make_images


def test_a_labelled_sheet_enlarges_small_pictures_by_a_whole_factor_and_labels_them():
    red = Image.new("RGB", (32, 32), "red")
    red.putpixel((0, 0), (0, 255, 0))
    sheet = labelled_sheet([[red]], title="samples at step 3", row_labels=["a photo of *"], tile_labels=[["seed 1"]])
    assert min(sheet.size) >= SHEET_SIDE
    arr = np.asarray(sheet)
    reds = np.argwhere((arr == [255, 0, 0]).all(-1))
    greens = np.argwhere((arr == [0, 255, 0]).all(-1))
    tile, k = reds.max(0) - reds.min(0) + 1, greens.max(0) - greens.min(0) + 1
    assert k[0] == k[1] and 32 * k[0] >= MIN_TILE and list(tile) == [32 * k[0]] * 2  # one pixel -> k x k pixels
    # the labels: dark pixels above the picture (title, prompt) and below it (the seed)
    top, bottom = reds.min(0)[0], reds.max(0)[0]
    dark = arr.sum(-1) < 300
    assert dark[:top].any() and dark[bottom + 1:].any()


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("logs")
    images = make_images(tmp / "my_cat")
    cfg = library_config(tmp, tiny_model_dir, images, "train.max_steps=2", "log.image_every=2", "log.save_every=0",
                         "log.sample_steps=1", "log.num_images=2", "log.val_loss_every=1",
                         "log.prompts=['a photo of * on a beach']")
    return trainmod.train(cfg).run_dir


def test_every_image_log_is_large_labelled_and_says_what_it_shows(logged_run):
    files = sorted((logged_run / "images").glob("*.png"))
    assert {f.name.split("_gs-")[0] for f in files} == {"conditioning", "inputs", "reconstruction", "samples",
                                                         "samples_scaled", "init_word", "validation"}
    for f in files:
        with Image.open(f) as im:
            assert min(im.size) >= 256, (f.name, im.size)  # 32 px training pictures, each shown at 128+ px
            assert im.size[0] >= 2 * 128, (f.name, im.size)
            assert "step 2" in im.text["Description"], f.name
    with Image.open(logged_run / "images" / "samples_scaled_gs-000002.png") as im:
        assert "seeds 1-2" in im.text["Description"] and "a photo of" in im.text["Description"]


def test_the_conditioning_sheet_is_mostly_pictures_not_blank(logged_run):
    with Image.open(logged_run / "images" / "conditioning_gs-000002.png") as im:
        arr = np.asarray(im.convert("RGB"))
        prompts = (logged_run / "images" / "conditioning_gs-000002.txt").read_text().split()
        assert all(w in im.text["Description"] for w in prompts)
    assert (arr.min(-1) < 245).mean() > 0.4  # more than 40% of the sheet is not white paper


def test_loss_png_has_a_legend_named_axes_and_ticks():
    from textinv.runs.curves import loss_figure

    rows = [(s, 1 / s, 0.005) for s in range(1, 41)]
    fig = loss_figure(rows, [(10, 0.5), (20, 0.3)])
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["loss (each step)", "loss, mean of 2 steps", "validation loss (fixed samples)", "learning rate"]
    assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel().startswith("loss")
    assert len(ax.get_xticks()) >= 3 and len(ax.get_yticks()) >= 3 and fig.axes[1].get_ylabel() == "learning rate"


def test_loss_png_is_redrawn_at_a_ctrl_c_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    images = make_images(tmp_path / "cat")
    cfg = library_config(tmp_path, tiny_model_dir, images, "train.max_steps=6", "log.image_every=0",
                         "log.save_every=0", "log.val_loss_every=0")
    monkeypatch.setattr(trainmod, "compute_loss", _InterruptAt(call=2))
    with pytest.raises(trainmod.TrainingInterrupted):
        trainmod.train(cfg)
    (run,) = (tmp_path / "logs").iterdir()
    # no image log and no checkpoint before Ctrl-C: the plot comes from the checkpoint Ctrl-C saved
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
