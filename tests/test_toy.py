"""The toy world, its judge, the build script (on a tiny shape) and the shipped toy model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from textinv.toy import world
from textinv.toy.build import MODEL_DIR
from textinv.toy.judge import Verdict, accuracy, judge


def test_world_is_deterministic_and_varied():
    first = [np.asarray(im) for im, _, _ in world.sample(24, seed=3)]
    again = [np.asarray(im) for im, _, _ in world.sample(24, seed=3)]
    other = [np.asarray(im) for im, _, _ in world.sample(24, seed=4)]
    assert all((a == b).all() for a, b in zip(first, again, strict=True))
    assert not all((a == b).all() for a, b in zip(first, other, strict=True))
    assert first[0].shape == (32, 32, 3)
    # A light background: the corners are bright and nearly grey.
    corners = np.stack([im[0, 0] for im in first]).astype(int)
    assert corners.min() > 200 and (corners.max(axis=1) - corners.min(axis=1)).max() <= 20


def test_world_has_six_colours_four_shapes_and_held_out_pairs():
    assert len(world.COLOURS) >= 6 and len(world.SHAPES) >= 4
    assert len(world.pairs()) == len(world.COLOURS) * len(world.SHAPES)
    # the demo's pair first; held-out pairs of different colours and shapes (issue 21)
    assert world.HELD_OUT[0] == ("purple", "triangle")
    n = len(world.HELD_OUT)
    assert len({c for c, _ in world.HELD_OUT}) == n and len({s for _, s in world.HELD_OUT}) == n
    seen = world.pairs(include_held_out=False)
    assert len(seen) == len(world.pairs()) - n
    for pair in world.HELD_OUT:
        assert pair in world.pairs() and pair not in seen
        # every colour edit of a held-out concept (its shape in another colour) is a pair the model saw
        assert all((c, pair[1]) in seen for c in world.COLOURS if c != pair[0])
    assert [(c, s) for _, c, s in world.sample(3, only=world.HELD_OUT[0])] == [world.HELD_OUT[0]] * 3
    assert world.caption("red", "circle") == "a photo of a red circle"


def test_every_world_word_is_one_token(tmp_path):
    from textinv.toy.tokenizer import write_clip_tokenizer

    tok = write_clip_tokenizer(world.vocabulary(), tmp_path)
    for word in world.vocabulary():
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    for template in world.TEMPLATES:  # every training prompt is one token per word
        text = world.caption("purple", "triangle", template)
        assert len(tok(text, add_special_tokens=False).input_ids) == len(text.replace("-", " - ").split())


def test_write_concept(tmp_path):
    paths = world.write_concept(tmp_path / "c", "blue", "cross", n=4, seed=1)
    assert [p.name for p in paths] == [f"blue-cross-{i}.png" for i in range(4)]
    assert all(judge(Image.open(p)).matches("blue", "cross") for p in paths)


def test_judge_is_right_on_rendered_pictures():
    """The issue asks for >= 95%; measured 100% on 960 pictures (and on blurred, noisy copies of them)."""
    pictures = list(world.sample(480, seed=7))
    right = sum(judge(im).matches(c, s) for im, c, s in pictures)
    assert right / len(pictures) >= 0.95
    rng = np.random.default_rng(0)
    blurred = 0
    for im, c, s in pictures[:240]:
        noisy = np.asarray(im.filter(ImageFilter.GaussianBlur(0.8)), dtype=float) + rng.normal(0, 8, (32, 32, 3))
        blurred += judge(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))).matches(c, s)
    assert blurred / 240 >= 0.95


@pytest.mark.parametrize("colour, shape", world.pairs())
def test_judge_knows_every_pair(colour, shape):
    images = [im for im, _, _ in world.sample(5, seed=11, only=(colour, shape))]
    assert accuracy(images, colour, shape) == 1.0


def test_judge_on_a_blank_or_noisy_picture():
    assert judge(Image.new("RGB", (32, 32), (240, 240, 240))) == Verdict(None, None)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert judge(Image.fromarray(noise)) == Verdict(None, None)  # noise is no shape on a light background
    assert judge(Image.new("RGB", (32, 32), (40, 80, 220))) == Verdict(None, None)  # a picture all blue, neither
    assert accuracy([], "red", "circle") == 0.0


def test_build_runs_end_to_end_on_a_tiny_shape(tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    from textinv.toy.build import BuildConfig, build
    from textinv.toy.pipeline import PipelineShape

    shape = PipelineShape(resolution=32).__dict__
    cfg = BuildConfig(images=48, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4, warmup=1, shape=shape)
    lines: list[str] = []
    # the several held-out pairs issue 21 asks the next build for: none of their pictures reaches the UNet
    four = (("purple", "triangle"), ("green", "circle"), ("orange", "cross"), ("yellow", "square"))
    monkeypatch.setattr(world, "HELD_OUT", four)
    report = build(cfg, tmp_path / "m", log=lines.append)
    assert report["held_out"] == [list(p) for p in four] and report["size_bytes"] > 0
    assert any(line.startswith("latents (40, ") for line in lines)  # 48 pictures, 2 of each of the 24 pairs, less 8
    assert any(line.startswith("unet step 1/2") for line in lines)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "m")
    assert pipe.vae.config.scaling_factor == pytest.approx(report["scaling_factor"])
    assert len(pipe.tokenizer("a photo of a purple triangle", add_special_tokens=False).input_ids) == 6


shipped = pytest.mark.skipif(not (MODEL_DIR / "model_index.json").exists(), reason="toy model not built yet")


@shipped
def test_shipped_model_is_small_and_loads_with_diffusers():
    import torch
    from diffusers import StableDiffusionPipeline

    files = [p for p in MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20_000_000
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".ckpt")]  # safetensors only
    info = json.loads((MODEL_DIR / "training.json").read_text())
    assert info["held_out"] == [list(p) for p in world.HELD_OUT]
    pipe = StableDiffusionPipeline.from_pretrained(MODEL_DIR)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        "a photo of a red circle", num_inference_steps=20, generator=torch.Generator().manual_seed(0), num_images_per_prompt=2
    ).images
    assert images[0].size == (32, 32)


def test_side_by_side_lays_out_three_titled_columns():
    from textinv.toy.demo import CELL, side_by_side

    red = [Image.new("RGB", (32, 32), "red")] * 4
    picture = side_by_side([red, red, red], ["a", "b", "c"])
    assert picture.height > 2 * CELL and picture.width > 6 * CELL
    assert picture.getpixel((picture.width // 2, picture.height // 2)) in ((255, 0, 0), (255, 255, 255))


@pytest.mark.slow  # the whole demo again through the CLI; the fast tests below cover the run and the command
@shipped
def test_demo_command_writes_the_picture_and_prints_its_path(tmp_path):
    from typer.testing import CliRunner

    from textinv.cli import app

    result = CliRunner().invoke(app, ["demo", "--steps", "2", "--output", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    picture = tmp_path / "demo" / "demo.png"
    assert result.stdout.strip().endswith(str(picture))
    assert len(list((tmp_path / "demo" / "inputs").glob("*.png"))) == 4
    assert Image.open(picture).size[0] > 3 * 2 * 96


def test_demo_command_passes_its_options_to_run_demo_and_prints_the_picture(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from textinv.cli import app
    from textinv.toy import demo

    calls = []

    def fake_run_demo(out_dir, **kwargs):
        calls.append((out_dir, kwargs))
        kwargs["reporter"].message("wrote 4 pictures")
        return demo.DemoResult(picture=out_dir / "demo.png", inputs=[], embedding=out_dir / "e.pt", run_dir=out_dir,
                               steps=2, init_prompt="a photo of a triangle", learned_prompt="a photo of *",
                               init_match=0.25, learned_match=0.75, seconds=3.0)

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    result = CliRunner().invoke(app, ["demo", "--steps", "2", "--seed", "5", "--output", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    ((out_dir, kwargs),) = calls
    assert out_dir == tmp_path / "demo" and (kwargs["max_steps"], kwargs["seed"]) == (2, 5)
    assert result.stdout.strip() == str(tmp_path / "demo" / "demo.png")
    assert "the judge sees the concept in 75% of 'a photo of *' and 25% of 'a photo of a triangle'" in result.stderr


def test_the_shipped_toy_model_is_recognised_by_family():
    from textinv.models.loading import load_pipeline

    assert load_pipeline("toy", device="cpu").textinv.family == "textinv toy"


@shipped
def test_demo_runs_torch_on_one_thread_and_reports_through_the_reporter(tmp_path, monkeypatch):
    import torch

    from textinv.reporting import Reporter
    from textinv.toy import demo

    class Heard(Reporter):
        def __init__(self):
            self.threads, self.tasks, self.messages = set(), [], []

        def start(self, task, total, *, done=0, note=""):
            self.threads.add(torch.get_num_threads())
            self.tasks.append(task)

        def message(self, text):
            self.messages.append(text)

    heard, before = Heard(), torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = demo.run_demo(tmp_path, max_steps=2, samples=2, reporter=heard)
        assert torch.get_num_threads() == 2  # put back afterwards
    finally:
        torch.set_num_threads(before)
    assert result.picture == tmp_path / "demo.png" and result.steps == 2
    assert sorted(p.name for p in (tmp_path / "inputs").glob("*.png")) == sorted(p.name for p in result.inputs)
    assert len(result.inputs) == 4 and result.embedding.is_file()
    assert Image.open(result.picture).size[0] > 4 * 2 * 96  # four columns of two pictures each (issue 21: edits)
    assert result.edit_prompt == "a photo of a <colour> *" and 0 <= result.edit_match <= 1
    assert heard.threads == {demo.THREADS} == {1}
    assert {"train", "images", "steps"} <= set(heard.tasks)
    stages = [m for m in heard.messages if m.startswith(("wrote 4 pictures", "learned *", "generating 2 pictures"))]
    assert [m.split()[0] for m in stages] == ["wrote", "learned", "generating"]  # the demo's own lines, in order


def test_pipelines_built_in_memory_leave_nothing_in_the_temp_dir(tmp_path, monkeypatch):
    """Each in-memory toy pipeline used to leave its tokenizer folder behind (251 `textinv-tok-*` folders after a
    day of test runs here)."""
    import tempfile

    from textinv.toy.pipeline import build_flux_pipeline, build_sd3_pipeline, build_sdxl_pipeline

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    words = world.vocabulary()
    pipes = [build(words) for build in (build_sdxl_pipeline, build_sd3_pipeline, build_flux_pipeline)]
    assert [p.tokenizer("a red circle").input_ids[1:3] for p in pipes] == [pipes[0].tokenizer("a red circle")
                                                                            .input_ids[1:3]] * 3
    assert list(tmp_path.iterdir()) == []
