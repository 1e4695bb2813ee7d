"""`textinv train` on the tiny pipeline: the run folder, what is learned and what is not, resume, faults."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from textinv import config as cfgmod
from textinv.cli import app
from textinv.formats.files import load_embedding
from textinv.models import tokens
from textinv.reporting import Reporter
from textinv.runs import Run
from textinv.training import data as datamod
from textinv.training import loop as trainmod
from textinv.training import setup

# Two CPU threads fighting other processes make the tiny model ~100x slower; one thread is plenty for it.

runner = CliRunner()
IMAGE_KEYS = ("conditioning", "inputs", "reconstruction", "samples", "samples_scaled", "init_word")


def make_images(folder: Path, n: int = 3, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = np.zeros((40, 48, 3), np.uint8)
        arr[:, :, i % 3] = 200  # a coloured block on a noisy background: something for the VAE to keep
        arr[10:30, 12:36] = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def images(tmp_path) -> Path:
    return make_images(tmp_path / "my_cat")


def tiny_config(tmp_path: Path, model: Path, **sections) -> Path:
    """A YAML config for the tiny model: 32 px, few steps, small image logs."""
    data = {
        "model": {"source": str(model)},
        "personalization": {"initializer_words": ["cat"]},
        "data": {"resolution": 32, "batch_size": 2},
        "train": {"max_steps": 6, "seed": 1},
        "log": {"output_dir": str(tmp_path / "logs"), "save_every": 3, "image_every": 3, "sample_steps": 2,
                "num_images": 2},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def library_config(tmp_path: Path, model: Path, images: Path, *items: str) -> cfgmod.Config:
    return cfgmod.build_config(tiny_config(tmp_path, model), list(items), **{"data.paths": [str(images)]})


def read_losses(run_dir: Path) -> list[tuple[int, float, float]]:
    with open(run_dir / "loss.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "loss", "lr"]
    return [(int(s), float(v), float(lr)) for s, v, lr in rows[1:]]


def test_cli_run_writes_every_file(tmp_path, tiny_model_dir, images):
    cfg = tiny_config(tmp_path, tiny_model_dir, log={"formats": ["pt", "bin", "safetensors"]})
    result = runner.invoke(app, ["train", str(images), "--init-word", "cat", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "logs").iterdir()
    assert run_dir.name.startswith("my_cat_")
    assert Path(result.stdout.strip()) == run_dir / "embeddings" / "my_cat.pt"
    # not a terminal: plain progress lines on stderr, the last one at the final step
    assert f"training in {run_dir} from step 0 to 6" in result.stderr
    assert re.search(r"^step 6/6 loss \d\.\d{4} lr 0\.01 [\d.]+ it/s eta 00:00:00$", result.stderr, re.M)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 6 and saved["data"]["paths"] == [str(images)]
    assert saved["personalization"]["initializer_words"] == ["cat"]
    names = {p.name for p in (run_dir / "embeddings").iterdir()}
    assert names == {"my_cat-3.pt", "my_cat-6.pt", "my_cat.pt", "my_cat.bin", "my_cat.safetensors"}
    images_written = {p.name for p in (run_dir / "images").iterdir()}
    assert images_written == ({f"{k}_gs-{s:06d}.png" for k in IMAGE_KEYS for s in (3, 6)}
                              | {f"conditioning_gs-{s:06d}.txt" for s in (3, 6)})
    with Image.open(run_dir / "images" / "samples_gs-000006.png") as im:
        # issue 23: 2 pictures side by side, each enlarged to 128 px or more, the sheet 256 px or more on its short side
        assert im.size[0] >= 2 * 128 and min(im.size) >= 256
    assert [s for s, _, _ in read_losses(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert (run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "state.json").is_file()

    emb = load_embedding(run_dir / "embeddings" / "my_cat.pt")
    assert [t.name for t in emb.tokens] == ["*"]
    assert emb.tokens[0].vectors.shape == (1, 32) and emb.tokens[0].vectors.dtype == torch.float32
    assert emb.step == 6 and emb.base_model == tiny_model_dir.name  # the folder's name, not its path
    for other in ("my_cat.bin", "my_cat.safetensors"):
        assert torch.equal(load_embedding(run_dir / "embeddings" / other).tokens[0].vectors, emb.tokens[0].vectors)

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    pipe.load_textual_inversion(str(run_dir / "embeddings" / "my_cat.pt"), token="<my-cat>")
    (tid,) = pipe.tokenizer("<my-cat>", add_special_tokens=False).input_ids
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[tid].detach(), emb.tokens[0].vectors[0])

    gen = runner.invoke(app, ["generate", "a photo of *", "--embedding", str(run_dir / "embeddings" / "my_cat.pt"),
                              "--model", str(tiny_model_dir), "-s", "2", "-S", "0", "-o", str(tmp_path / "out"),
                              "--json"])
    assert gen.exit_code == 0, gen.output
    assert "placeholders: *" in gen.stderr
    assert Path(json.loads(gen.stdout.splitlines()[-1])["path"]).is_file()


def test_only_placeholder_rows_change(tmp_path, tiny_model_dir, images, monkeypatch):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    before = {f"{name}.{k}": v.clone() for name in ("text_encoder", "unet", "vae")
              for k, v in getattr(pipe, name).state_dict().items()}
    monkeypatch.setattr(setup, "load_pipeline", lambda *args, **kwargs: pipe)
    cfg = library_config(tmp_path, tiny_model_dir, images, "log.image_every=0", "optim.learning_rate=0.05")
    result = trainmod.train(cfg)
    after = {f"{name}.{k}": v for name in ("text_encoder", "unet", "vae")
             for k, v in getattr(pipe, name).state_dict().items()}
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "a frozen weight changed"
    assert all(not p.requires_grad for name in ("text_encoder", "unet", "vae")
               for p in getattr(pipe, name).parameters())
    cat_id = pipe.tokenizer("cat", add_special_tokens=False).input_ids[0]
    learned = load_embedding(result.embedding_path).tokens[0].vectors[0]
    init = before["text_encoder.embeddings.token_embedding.weight"][cat_id]
    assert not torch.equal(learned, init)
    # Adam moves each element by at most about lr per step; lr is scaled by the batch of 2
    assert 0 < (learned - init).abs().max() < 0.05 * 2 * 6 * 1.01


def denoising_loss(model_dir: Path, images: Path, vectors: torch.Tensor) -> float:
    """Mean denoising loss of 'a photo of a <placeholder>' on the images, over fixed noise and timesteps."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from textinv.pictures import load_folder

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    tok, te = pipe.tokenizer, pipe.text_encoder
    first = len(tok)
    tokens.add_new_tokens(tok, ["<x>"], first)
    base = te.get_input_embeddings()
    tokens.replace_module(te, base, tokens.SplicedEmbedding(base, vectors, first))
    pics, _ = load_folder(images, 32)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    ids = tok(["a photo of a <x>"] * len(pics), padding="max_length", max_length=77, return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        lat = pipe.vae.encode(torch.stack([p.pixels for p in pics])).latent_dist.mean * pipe.vae.config.scaling_factor
        hidden = te(ids)[0]
        losses = []
        for _ in range(24):
            noise = torch.randn(lat.shape, generator=g)
            t = torch.randint(0, 1000, (len(pics),), generator=g)
            pred = pipe.unet(sched.add_noise(lat, noise, t), t, hidden).sample
            losses.append(torch.nn.functional.mse_loss(pred, noise).item())
    return float(np.mean(losses))


def test_loss_decreases_on_a_fixed_seed(tmp_path, tiny_model_dir, images):
    cfg = library_config(tmp_path, tiny_model_dir, images, "train.max_steps=40", "log.image_every=0",
                         "log.save_every=0", "optim.learning_rate=0.01", "data.batch_size=4")
    result = trainmod.train(cfg)
    learned = load_embedding(result.embedding_path).tokens[0].vectors
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    cat = pipe.tokenizer("cat", add_special_tokens=False).input_ids
    init = pipe.text_encoder.get_input_embeddings().weight[cat].detach()
    before, after = denoising_loss(tiny_model_dir, images, init), denoising_loss(tiny_model_dir, images, learned)
    assert after < before - 1e-4, (before, after)
    # and the run is deterministic: the same seed gives the same losses
    again = trainmod.train(cfg)
    assert again.losses == result.losses


class _InterruptAt:
    """Sends the process a real SIGINT (Ctrl-C) during the forward pass of a given call."""

    def __init__(self, call: int):
        self.call, self.n = call, 0
        self.real = trainmod.compute_loss

    def __call__(self, *args, **kwargs):
        self.n += 1
        if self.n == self.call:
            os.kill(os.getpid(), signal.SIGINT)
        return self.real(*args, **kwargs)


def test_ctrl_c_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, images, monkeypatch):
    sets = ["--set", "train.max_steps=8", "--set", "log.save_every=5", "--set", "log.image_every=0",
            "--set", "optim.lr_scheduler=cosine", "--set", "optim.lr_warmup_steps=2"]
    cfg = str(tiny_config(tmp_path, tiny_model_dir))
    whole = runner.invoke(app, ["train", str(images), "-i", "cat", "-c", cfg, "--name", "whole", *sets])
    assert whole.exit_code == 0, whole.output

    monkeypatch.setattr(trainmod, "compute_loss", _InterruptAt(call=3))
    cut = runner.invoke(app, ["train", str(images), "-i", "cat", "-c", cfg, "--name", "cut", *sets])
    assert cut.exit_code == 130, cut.output
    (run_dir,) = (tmp_path / "logs").glob("cut_*")
    assert f"textinv train --resume {run_dir}" in cut.stderr
    assert "step 3" in cut.stderr
    assert [s for s, _, _ in read_losses(run_dir)] == [1, 2, 3]
    monkeypatch.undo()

    resumed = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    (whole_dir,) = (tmp_path / "logs").glob("whole_*")
    assert read_losses(run_dir) == read_losses(whole_dir)
    a = load_embedding(whole_dir / "embeddings" / "whole.pt").tokens[0].vectors
    b = load_embedding(run_dir / "embeddings" / "cut.pt").tokens[0].vectors
    assert torch.equal(a, b)
    assert torch.equal(load_embedding(whole_dir / "embeddings" / "whole-5.pt").tokens[0].vectors,
                       load_embedding(run_dir / "embeddings" / "cut-5.pt").tokens[0].vectors)

    again = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert again.exit_code == 1 and "already finished at step 8" in again.stderr
    more = runner.invoke(app, ["train", "--resume", str(run_dir), "--max-steps", "9"])
    assert more.exit_code == 0, more.output
    assert [s for s, _, _ in read_losses(run_dir)][-2:] == [8, 9]


def test_resume_after_a_kill_drops_the_lost_steps(tmp_path, tiny_model_dir, images):
    """A SIGKILL after step 5 leaves the step-4 state, loss rows up to 5 and maybe a temp file: resume redoes 5."""
    cfg = library_config(tmp_path, tiny_model_dir, images, "log.save_every=4", "log.image_every=0",
                         "train.max_steps=6")
    whole = trainmod.train(cfg)
    (whole.run_dir / "state.json").write_text('{"step": 4, "state": "state/state-000004.pt"}\n')
    (whole.run_dir / "embeddings" / ".my_cat.pt.abc.tmp").write_bytes(b"trunc")  # a write cut short
    lines = (whole.run_dir / "loss.csv").read_text().splitlines()
    (whole.run_dir / "loss.csv").write_text("\n".join(lines[:6]) + "\n")  # header + steps 1-5
    resumed = trainmod.train(Run.open(whole.run_dir).config(), resume=whole.run_dir)
    assert resumed.losses == whole.losses[4:]
    assert [s for s, _, _ in read_losses(whole.run_dir)] == [1, 2, 3, 4, 5, 6]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir, images, monkeypatch):
    real = trainmod.compute_loss
    calls = []

    def nan_at_5(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(trainmod, "compute_loss", nan_at_5)
    cfg = str(tiny_config(tmp_path, tiny_model_dir, log={"image_every": 0}))
    result = runner.invoke(app, ["train", str(images), "-i", "cat", "-c", cfg])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("error: loss became nan at step 5; stopped, the last good checkpoint is ")
    assert sum(line.startswith("error:") for line in lines) == 1
    (run_dir,) = (tmp_path / "logs").iterdir()
    assert str(run_dir / "embeddings" / "my_cat-3.pt") in " ".join(result.stderr.split())
    assert {p.name for p in (run_dir / "embeddings").iterdir()} == {"my_cat-3.pt"}
    assert torch.isfinite(load_embedding(run_dir / "embeddings" / "my_cat-3.pt").tokens[0].vectors).all()
    assert '"step": 3' in (run_dir / "state.json").read_text()


def test_v_prediction_model_trains(tmp_path):
    from tests.conftest import TINY_WORDS
    from textinv.toy.pipeline import PipelineShape, build_pipeline

    model = tmp_path / "tiny-v"
    build_pipeline(TINY_WORDS, model, shape=PipelineShape(prediction_type="v_prediction"), seed=0)
    imgs = make_images(tmp_path / "v_imgs")
    cfg = cfgmod.build_config("v2-finetune", ["data.resolution=32", "train.max_steps=4", "log.image_every=0",
                                              f"log.output_dir={tmp_path / 'logs'}", "model.prediction_type=null"],
                              **{"model.source": str(model), "data.paths": [str(imgs)],
                                 "personalization.initializer_words": ["dog"]})
    assert cfg.optim.gradient_accumulation_steps == 2
    seen = []
    real = trainmod.compute_loss

    def spy(unet, text_encoder, noisy, timesteps, ids, target, *rest):
        seen.append((noisy.clone(), target.clone()))
        return real(unet, text_encoder, noisy, timesteps, ids, target, *rest)

    trainmod.compute_loss, saved = spy, trainmod.compute_loss
    try:
        result = trainmod.train(cfg)
    finally:
        trainmod.compute_loss = saved
    assert result.prediction_type == "v_prediction"
    assert len(seen) == 8  # 4 steps x 2 micro-batches
    assert all(np.isfinite(result.losses))
    # v = sqrt(a) * noise - sqrt(1 - a) * x0 is not the noise itself
    noisy, target = seen[0]
    assert not torch.allclose(noisy, target)
    assert load_embedding(result.embedding_path).tokens[0].vectors.shape == (1, 32)


def test_two_placeholders_and_a_multi_token_init_word(tmp_path, tiny_model_dir):
    cats, dogs = make_images(tmp_path / "cats", 2, seed=1), make_images(tmp_path / "dogs", 2, seed=2)
    cfg = str(tiny_config(tmp_path, tiny_model_dir, log={"image_every": 0}))
    result = runner.invoke(app, [
        "train", str(cats), str(dogs), "-p", "<cat>", "-p", "<zebra>", "-i", "cat", "-i", "zebra", "-c", cfg,
        "--set", "personalization.num_vectors_per_token=2", "--name", "pets"])
    assert result.exit_code == 0, result.output
    # 'zebra' is not in the tiny vocabulary, so it is spelled byte by byte: z e b r a
    assert "init word 'zebra' is 5 tokens" in " ".join(result.stderr.split())
    (run_dir,) = (tmp_path / "logs").iterdir()
    emb = load_embedding(run_dir / "embeddings" / "pets.pt")
    assert [t.name for t in emb.tokens] == ["<cat>", "<zebra>"]
    assert [tuple(t.vectors.shape) for t in emb.tokens] == [(2, 32), (2, 32)]
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    z, b = pipe.tokenizer("z", add_special_tokens=False).input_ids[0], pipe.tokenizer("zebra", add_special_tokens=False).input_ids[2]
    # vectors spread over the tokens in turn (0 and 5*1//2 = 2: z and b), each moved a little by 6 steps
    zebra = emb.tokens[1].vectors
    assert (zebra[0] - table[z]).abs().max() < 0.1 and (zebra[1] - table[b]).abs().max() < 0.1


def test_accumulation_scales_the_learning_rate_and_learned_rows_stay_float32(tmp_path, tiny_model_dir, images):
    cfg = library_config(tmp_path, tiny_model_dir, images, "optim.gradient_accumulation_steps=2",
                         "data.batch_size=1", "train.max_steps=2", "log.image_every=0", "train.mixed_precision=bf16",
                         "optim.learning_rate=0.001")
    result = trainmod.train(cfg)
    assert [lr for _, _, lr in read_losses(result.run_dir)] == [pytest.approx(0.002), pytest.approx(0.002)]
    state = torch.load(result.run_dir / "state" / "state-000002.pt", weights_only=True)
    assert state["learned"].dtype == torch.float32
    assert all(v.dtype == torch.float32 for s in state["optimizer"]["state"].values()
               for k, v in s.items() if k != "step")


def test_lr_schedules():
    const = setup.lr_lambda("constant", 2, 10)
    assert [const(s) for s in range(4)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    lin = setup.lr_lambda("linear", 0, 10)
    assert [lin(0), lin(5), lin(10)] == pytest.approx([1.0, 0.5, 0.0])
    cos = setup.lr_lambda("cosine", 0, 10)
    assert [cos(0), cos(5), cos(10)] == pytest.approx([1.0, 0.5, 0.0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.max_steps=-5"], "`train.max_steps` is -5; it must be 1 or more"),
        (["--set", "optim.learnin_rate=1"], "unknown config key `optim.learnin_rate`; did you mean `optim.learning_rate`?"),
        (["--placeholder", ""], "a placeholder is empty"),
        (["--set", "data.resolution=500"], "`data.resolution` is 500; it must be a multiple of 8"),
        (["--set", "data.batch_size=two"], "`data.batch_size` must be a whole number, got 'two'"),
        (["--init-word", "cat", "--init-word", "dog"], "1 placeholder(s) ['*'] but 2 init word(s)"),
        (["--model", "/nonexistent/model"], "model /nonexistent/model: no such file or folder"),
        (["--config", "nope.yaml"], "config file nope.yaml not found"),
        (["--report-to", "mlflow"], "`log.report_to` is 'mlflow'; it must be one of none | tensorboard | wandb | all"),
        pytest.param(["--report-to", "wandb"], "--report-to wandb needs the wandb package: pip install 'textinv[wandb]'",
                     marks=pytest.mark.skipif(__import__("importlib").util.find_spec("wandb") is not None,
                                              reason="wandb is installed")),
    ],
)
def test_errors_are_one_clear_line(tmp_path, images, args, message):
    if "--init-word" not in args:
        args = [*args, "--init-word", "cat"]
    result = runner.invoke(app, ["train", str(images), *args])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in " ".join(result.stderr.split())


def test_data_and_resume_errors(tmp_path, tiny_model_dir):
    cfg = str(tiny_config(tmp_path, tiny_model_dir))
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["train", str(empty), "-i", "cat", "-c", cfg])
    assert result.exit_code == 1 and f"no images in {empty} (it is empty)" in result.stderr
    result = runner.invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 1 and "is not a textinv run folder" in result.stderr
    result = runner.invoke(app, ["train", str(empty), "--resume", str(tmp_path)])
    assert result.exit_code == 1 and "drop DIR" in result.stderr
    result = runner.invoke(app, ["train", "-i", "cat"])
    assert result.exit_code == 2 and "pass a folder of images" in result.stderr  # a usage error (issue 11)


def test_captions_replace_templates_and_must_name_the_placeholder(tmp_path):
    folder = make_images(tmp_path / "pics", 2)
    (folder / "img0.txt").write_text("a photo of [name] on a sofa\n")
    cfg = cfgmod.build_config(None, ["data.resolution=32"], **{"data.paths": [str(folder)],
                                                               "personalization.placeholder_strings": ["<c>"]})
    messages = []

    class R(Reporter):
        def message(self, text):
            messages.append(text)

    images, items = datamod.build_items(cfg.personalization, cfg.data, R())
    assert [it.prompts for it in items][0] == ["a photo of <c> on a sofa"]
    assert len(items[1].prompts) == 27 and items[1].prompts[0] == "a photo of a <c>"
    assert tokens.expand_placeholders("a photo of <c>, big", {"<c>": "<t-0> <t-1>"}) == "a photo of <t-0> <t-1>, big"
    assert messages == []

    (folder / "img1.txt").write_text("a photo of a sofa")
    with pytest.raises(datamod.DataError, match="caption img1.txt does not mention the placeholder"):
        datamod.build_items(cfg.personalization, cfg.data, R())
    two = cfgmod.build_config(None, ["data.resolution=32"], **{
        "data.paths": [str(folder)], "personalization.placeholder_strings": ["<a>", "<b>"],
        "personalization.initializer_words": ["cat", "dog"]})
    (folder / "img1.txt").unlink()
    with pytest.raises(datamod.DataError, match="img1.png has no caption file, and with 2 placeholders in one folder"):
        datamod.build_items(two.personalization, two.data, R())


# --- issue 13: attention, checkpointing, the latent cache ---------------------------------------------------------


def test_training_unet_attention_stays_on_sdpa(tmp_path, tiny_model_dir, images, monkeypatch):
    from diffusers.models.attention_processor import AttnProcessor2_0

    seen = []
    real = trainmod.compute_loss

    def spy(unet, *args, **kwargs):
        seen.append({type(proc) for proc in unet.attn_processors.values()})
        return real(unet, *args, **kwargs)

    monkeypatch.setattr(trainmod, "compute_loss", spy)
    trainmod.train(library_config(tmp_path, tiny_model_dir, images, "train.max_steps=1", "log.image_every=0"))
    assert seen and all(kinds == {AttnProcessor2_0} for kinds in seen), seen


def test_gradient_checkpointing_gives_the_same_losses(tmp_path, tiny_model_dir, images, monkeypatch):
    sets = ("train.max_steps=3", "log.image_every=0", "log.save_every=0")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = trainmod.train(library_config(tmp_path / "a", tiny_model_dir, images, *sets))
    checkpointed = []
    real = trainmod.compute_loss

    def spy(unet, *args, **kwargs):
        checkpointed.append(unet.is_gradient_checkpointing)
        return real(unet, *args, **kwargs)

    monkeypatch.setattr(trainmod, "compute_loss", spy)
    ckpt = trainmod.train(library_config(tmp_path / "b", tiny_model_dir, images, *sets,
                                         "train.gradient_checkpointing=true"))
    assert checkpointed == [True] * 3
    assert ckpt.losses == pytest.approx(plain.losses, rel=1e-5, abs=1e-7)
    a = load_embedding(plain.embedding_path).tokens[0].vectors
    b = load_embedding(ckpt.embedding_path).tokens[0].vectors
    assert torch.allclose(a, b, atol=1e-6)


def test_gradient_checkpointing_flag_reaches_the_config(tmp_path, tiny_model_dir, images):
    cfg = str(tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 1}, log={"image_every": 0}))
    result = runner.invoke(app, ["train", str(images), "-i", "cat", "-c", cfg, "--gradient-checkpointing"])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "logs").iterdir()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["gradient_checkpointing"] is True


def test_latent_cache_size_and_large_caches_go_to_the_cpu_in_half(tmp_path, tiny_model_dir, images, monkeypatch):
    from diffusers import AutoencoderKL

    from textinv.pictures import load_folder

    vae = AutoencoderKL.from_pretrained(tiny_model_dir / "vae")
    pics, _ = load_folder(images, 32)
    cache = datamod.cache_latents(vae, pics, torch.device("cpu"))
    every = ([i for i in range(len(pics)) for _ in (0, 1)], [0, 1] * len(pics))
    cache.lookup(*every)
    side = 32 // 2 ** (len(vae.config.block_out_channels) - 1)
    assert cache.mean.dtype == torch.float32
    assert cache.nbytes == datamod.cache_bytes(len(pics), vae.config.latent_channels, side)
    # the sizes the README quotes: SD's 4-channel latents, 1/8 of the image side
    assert datamod.cache_bytes(500, 4, 512 // 8) == 125 * 2**20
    assert datamod.cache_bytes(5, 4, 1024 // 8) == 5 * 2**20
    monkeypatch.setattr(datamod, "CACHE_ON_DEVICE_BYTES", cache.nbytes - 1)
    big = datamod.cache_latents(vae, pics, torch.device("cpu"))
    big.lookup(*every)
    assert big.mean.dtype == torch.float16 and big.nbytes == cache.nbytes // 2
    assert torch.allclose(big.mean.float(), cache.mean, atol=1e-2)


def test_latents_are_encoded_when_first_drawn_one_pair_at_a_time(tiny_model_dir, images):
    """The first step waits for the pairs it draws, not for the whole folder (the time to first step at SD scale),
    and a pair's latents do not depend on what was encoded with it."""
    from diffusers import AutoencoderKL

    from textinv.pictures import load_folder

    vae = AutoencoderKL.from_pretrained(tiny_model_dir / "vae")
    pics, _ = load_folder(images, 32)
    calls = []
    encode = vae.encode
    vae.encode = lambda x: calls.append(x.shape[0]) or encode(x)
    cache = datamod.cache_latents(vae, pics, torch.device("cpu"))
    assert calls == [] and not cache.encoded.any()
    mean, std = cache.lookup([1, 1], [1, 1])
    assert calls == [1] and cache.encoded.sum() == 1 and bool(cache.encoded[1, 1])
    with torch.no_grad():
        direct = encode(pics[1].pixels.flip(-1)[None]).latent_dist
    assert torch.equal(mean[0], direct.mean[0]) and torch.equal(std[1], direct.std[0])
    cache.lookup([0, 1, 2], [0, 1, 0])
    assert calls == [1, 1, 1] and cache.encoded.sum() == 3


# --- issue 14: accelerate, effective batch, trackers ----------------------------------------------------------------


def test_effective_batch_and_lr_are_printed_and_recorded(tmp_path, tiny_model_dir, images):
    cfg = str(tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 1}, log={"image_every": 0}))
    result = runner.invoke(app, ["train", str(images), "-i", "cat", "-c", cfg, "--set",
                                 "optim.gradient_accumulation_steps=3", "--set", "optim.learning_rate=0.001"])
    assert result.exit_code == 0, result.output
    line = ("effective batch 6 = 2 per process x 3 accumulation x 1 process(es); learning rate 0.006 = 0.001 x 6 "
            "(optim.scale_lr)")
    assert line in " ".join(result.stderr.split())
    (run_dir,) = (tmp_path / "logs").iterdir()
    assert (run_dir / "config.yaml").read_text().splitlines()[0] == f"# {line}"
    assert read_losses(run_dir)[0][2] == pytest.approx(0.006)


def test_report_to_tensorboard_writes_events_tensorboard_reads(tmp_path, tiny_model_dir, images):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = library_config(tmp_path, tiny_model_dir, images, "train.max_steps=3", "log.image_every=0",
                         "log.report_to=tensorboard")
    result = trainmod.train(cfg)
    acc = EventAccumulator(str(result.run_dir / "tensorboard" / "textinv"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx(result.losses, rel=1e-5)


# --- issue 11: image logs ---------------------------------------------------------------------------------------


def test_conditioning_logs_the_prompts_drawn_and_every_placeholder_is_sampled(tmp_path, tiny_model_dir, monkeypatch):
    from diffusers import StableDiffusionPipeline

    cats, dogs = make_images(tmp_path / "cats", 2, seed=1), make_images(tmp_path / "dogs", 2, seed=2)
    cfg = cfgmod.build_config(tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 3},
                                          log={"image_every": 3, "save_every": 0, "num_images": 2}), None, **{
        "data.paths": [str(cats), str(dogs)], "personalization.placeholder_strings": ["<c>", "<d>"],
        "personalization.initializer_words": ["cat", "dog"], "data.batch_size": 4})
    drawn: list[str] = []
    real_draw = datamod.Batches.draw

    def spy_draw(self, batch):
        out = real_draw(self, batch)
        drawn.extend(self.items[i].prompts[c] for i, (_, c) in list(self.drawn.items())[-batch:])
        return out

    prompts: list[str] = []
    real_call = StableDiffusionPipeline.__call__

    def spy_call(self, prompt, *args, **kwargs):
        prompts.append(prompt)
        return real_call(self, prompt, *args, **kwargs)

    monkeypatch.setattr(datamod.Batches, "draw", spy_draw)
    monkeypatch.setattr(StableDiffusionPipeline, "__call__", spy_call)
    result = trainmod.train(cfg)
    text = (result.run_dir / "images" / "conditioning_gs-000003.txt").read_text()
    rows = [block.splitlines() for block in text.strip().split("\n\n")]
    assert len(rows) == 2 and all(len(r) == 2 for r in rows)
    assert all("<c>" in line for line in rows[0]) and all("<d>" in line for line in rows[1])
    assert all(line in drawn[-4:] for row in rows for line in row)  # the prompts of the last step's draws
    # samples, samples_scaled and init_word: one pipeline call per placeholder each, one row of the grid each
    assert len(prompts) == 6
    assert sum("cat" in p for p in prompts) >= 1 and sum("dog" in p for p in prompts) >= 1
    samples = Image.open(result.run_dir / "images" / "samples_gs-000003.png")
    inputs = Image.open(result.run_dir / "images" / "inputs_gs-000003.png")
    # 2 rows (placeholders) of 2 pictures, each shown at 128 px or more (issue 23; was 32 px a picture)
    assert all(im.size[0] >= 2 * 128 and im.size[1] >= 2 * 128 for im in (samples, inputs))


# --- issue 12: resume faults ----------------------------------------------------------------------------------------


def _finished_run(tmp_path, tiny_model_dir, images, *sets):
    cfg = library_config(tmp_path, tiny_model_dir, images, "log.save_every=2", "log.image_every=0",
                         "train.max_steps=6", *sets)
    return trainmod.train(cfg)


class Messages(Reporter):
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


@pytest.mark.parametrize("damage", ["truncated", "empty", "wrong keys", "pointer"])
def test_resume_falls_back_to_the_previous_intact_state(tmp_path, tiny_model_dir, images, damage):
    whole = _finished_run(tmp_path, tiny_model_dir, images)
    run = whole.run_dir
    # as if killed after the step-4 state: state.json points at state-000004, state-000002 is kept beside it
    for f in (run / "embeddings").glob("my_cat.*"):
        f.unlink()
    (run / "state" / "state-000006.pt").unlink()
    torch.save(torch.load(run / "state" / "state-000004.pt", weights_only=True), run / "state" / "state-000002.pt")
    (tmp_path / "two").mkdir()
    two = _finished_run(tmp_path / "two", tiny_model_dir, images, "train.max_steps=2")
    (run / "state" / "state-000002.pt").write_bytes((two.run_dir / "state" / "state-000002.pt").read_bytes())
    (run / "state.json").write_text('{"step": 4, "state": "state/state-000004.pt"}\n')
    latest = run / "state" / "state-000004.pt"
    if damage == "truncated":
        latest.write_bytes(latest.read_bytes()[:300])
    elif damage == "empty":
        latest.write_bytes(b"")
    elif damage == "wrong keys":
        torch.save({"step": 4, "learned": torch.zeros(1)}, latest)
    else:
        latest.write_bytes(latest.read_bytes()[:300])
        (run / "state.json").write_text('{"step": 4, "sta')
    said = Messages()
    resumed = trainmod.train(Run.open(run).config(), resume=run, reporter=said)
    assert any(line.startswith("warning: state-000004.pt is ") and "resuming from state-000002.pt (step 2)" in line
               for line in said.lines), said.lines
    assert resumed.losses == pytest.approx(whole.losses[2:], rel=1e-6)
    assert [s for s, _, _ in read_losses(run)] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_hostile_state_file(tmp_path, tiny_model_dir, images):
    whole = _finished_run(tmp_path, tiny_model_dir, images, "train.max_steps=4")
    (whole.run_dir / "embeddings" / "my_cat.pt").unlink()

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    import pickle

    with open(whole.run_dir / "state" / "state-000004.pt", "wb") as f:
        pickle.dump({"step": 4, "x": Boom()}, f)
    result = runner.invoke(app, ["train", "--resume", str(whole.run_dir)])
    assert result.exit_code == 1, result.output
    assert "holds Python code, not only tensors" in result.stderr and result.stderr.count("\n") == 1
    assert "weights_only" not in result.stderr
    assert not (tmp_path / "pwned").exists()


def test_a_kill_after_the_last_state_then_resume_writes_the_final_files(tmp_path, tiny_model_dir, images):
    whole = _finished_run(tmp_path, tiny_model_dir, images, "log.formats=[pt,safetensors]")
    finals = {p.name: load_embedding(p).tokens[0].vectors for p in (whole.run_dir / "embeddings").glob("my_cat.*")}
    assert set(finals) == {"my_cat.pt", "my_cat.safetensors"}
    for name in finals:
        (whole.run_dir / "embeddings" / name).unlink()
    result = runner.invoke(app, ["train", "--resume", str(whole.run_dir)])
    assert result.exit_code == 0, result.output
    assert "final files were not written; writing them" in result.stderr
    assert "already finished" not in result.stderr
    for name, vectors in finals.items():
        assert torch.equal(load_embedding(whole.run_dir / "embeddings" / name).tokens[0].vectors, vectors)
    done = runner.invoke(app, ["train", "--resume", str(whole.run_dir)])
    assert done.exit_code == 1 and "already finished at step 6" in done.stderr


def test_a_bad_loss_row_does_not_break_later_resumes(tmp_path, tiny_model_dir, images):
    whole = _finished_run(tmp_path, tiny_model_dir, images)
    csv_path = whole.run_dir / "loss.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([*lines[:3], "3,0.1", "garbage,,", *lines[3:5], "5,0.2"]) + "\n")
    (whole.run_dir / "state.json").write_text('{"step": 4, "state": "state/state-000004.pt"}\n')
    for _ in range(2):
        resumed = trainmod.train(Run.open(whole.run_dir).config(max_steps=6 + _),
                                 resume=whole.run_dir)
        assert resumed.losses
        (whole.run_dir / "state.json").write_text('{"step": 4, "state": "state/state-000004.pt"}\n')
    assert [s for s, _, _ in read_losses(whole.run_dir)] == [1, 2, 3, 4, 5, 6, 7]


# --- several processes: accelerate launch, two CPU processes on gloo --------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(args: list[str], prefix: Path, n: int = 2) -> subprocess.CompletedProcess:
    """`accelerate launch` N CPU processes of tests/launch_probe.py: on a machine without GPUs accelerate starts
    several processes only through its torchrun path (`--multi_gpu`); textinv then joins them over gloo."""
    launcher = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(Path(__file__).with_name("launch_probe.py")), str(prefix), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_under_accelerate_launch_learn_what_one_process_learns(tmp_path, tiny_model_dir, images):
    cfg = str(tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 4},
                          log={"save_every": 2, "image_every": 4, "formats": ["pt", "safetensors"]}))
    one = runner.invoke(app, ["train", str(images), "-i", "cat", "-c", cfg, "--name", "one", "--set", "data.batch_size=2"])
    assert one.exit_code == 0, one.output
    two = accelerate_launch(["train", str(images), "-i", "cat", "-c", cfg, "--name", "two", "--set", "data.batch_size=1"],
                            tmp_path / "rows")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "effective batch 2 = 1 per process x 1 accumulation x 2 process(es)" in " ".join(two.stderr.split())
    (one_dir,) = (tmp_path / "logs").glob("one_*")
    (two_dir,) = (tmp_path / "logs").glob("two_*")  # one run folder, written once

    # every step, both processes hold the same learned rows
    r0, r1 = torch.load(f"{tmp_path / 'rows'}-rank0.pt"), torch.load(f"{tmp_path / 'rows'}-rank1.pt")
    assert r0.shape[0] == 4 and torch.equal(r0, r1)
    # the same files as the one-process run, and the same learning to float tolerance
    def names(run):
        return sorted(str(p.relative_to(run)).replace(run.name.split("_")[0], "NAME") for p in run.rglob("*")
                      if p.is_file() and "tensorboard" not in p.parts)
    assert names(two_dir) == names(one_dir)
    assert [s for s, _, _ in read_losses(two_dir)] == [1, 2, 3, 4]
    assert [v for _, v, _ in read_losses(two_dir)] == pytest.approx([v for _, v, _ in read_losses(one_dir)], rel=1e-4)
    a = load_embedding(one_dir / "embeddings" / "one.pt").tokens[0].vectors
    b = load_embedding(two_dir / "embeddings" / "two.pt").tokens[0].vectors
    assert torch.allclose(a, b, atol=1e-5) and torch.equal(b[0], r0[-1][0])

    # --resume with the same process count continues; with another count it says so in one line
    more = accelerate_launch(["train", "--resume", str(two_dir), "--max-steps", "6"], tmp_path / "more")
    assert more.returncode == 0, more.stderr[-3000:]
    assert [s for s, _, _ in read_losses(two_dir)] == [1, 2, 3, 4, 5, 6]
    alone = runner.invoke(app, ["train", "--resume", str(two_dir), "--max-steps", "8"])
    assert alone.exit_code == 1 and "trained by 2 process(es); resume it with as many" in alone.stderr


# --- fault injection: SIGKILL at random points, then --resume ---------------------------------------------------------


def _train_process(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-m", "textinv", "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _rows_done(logs: Path) -> int:
    runs_ = list(logs.glob("run_*/loss.csv"))
    return len(runs_[0].read_text().splitlines()) - 1 if runs_ else 0


def _check_every_file_is_whole(run: Path) -> None:
    """What a kill may leave: whole files and hidden temp files, never a half-written visible one."""
    for f in run.rglob("*"):
        if not f.is_file() or f.name.startswith("."):
            continue
        if f.suffix == ".pt":
            torch.load(f, weights_only=True)
        elif f.suffix == ".png":
            Image.open(f).load()
        elif f.suffix == ".yaml":
            assert yaml.safe_load(f.read_text())
        elif f.suffix == ".json":
            json.loads(f.read_text())


def _run_files(run: Path) -> dict[str, Path]:
    return {str(f.relative_to(run)): f for f in run.rglob("*") if f.is_file() and not f.name.startswith(".")}


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_ends_as_an_uninterrupted_run(tmp_path, tiny_model_dir, images):
    import random

    cfg = str(tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 12},
                          log={"save_every": 2, "image_every": 4, "formats": ["pt", "bin", "safetensors"]}))
    base = [str(images), "-i", "cat", "-c", cfg, "--name", "run"]
    whole = _train_process([*base, "-o", str(tmp_path / "whole")])
    assert whole.wait(timeout=600) == 0, whole.stderr.read()
    (whole_dir,) = (tmp_path / "whole").iterdir()

    rng = random.Random(0)
    logs = tmp_path / "cut"
    kills = 0
    history: list = []
    args = [*base, "-o", str(logs)]
    for _ in range(40):  # bounded, so that a resume that keeps failing fails the test instead of hanging CI
        proc = _train_process(args)
        target = rng.randint(0, 12)
        while proc.poll() is None and _rows_done(logs) < target:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.4))
        if proc.poll() is None and kills < 6:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        elif proc.wait(timeout=600) == 0:
            break
        err = proc.stderr.read()
        history.append((args[:2], target, proc.returncode, err[-300:]))
        if proc.returncode == 1 and "already finished at step 12" in err:
            break  # the kill came after the final files were written: the run is complete
        found = list(logs.glob("run_*"))
        for run in found:
            _check_every_file_is_whole(run)
        if found and (found[0] / "state.json").is_file():
            args = ["--resume", str(found[0])]
        else:  # killed before the first checkpoint: nothing to resume, start again
            for run in found:
                shutil.rmtree(run)
            args = [*base, "-o", str(logs)]
    else:
        pytest.fail(f"the run did not finish in 40 processes: {history[-3:]}")
    assert kills >= 3
    (cut_dir,) = logs.iterdir()
    want, got = _run_files(whole_dir), _run_files(cut_dir)
    assert sorted(got) == sorted(want), (sorted(set(got) ^ set(want)), history)
    for name, path in want.items():
        if name.endswith(".pt"):  # torch zips: compare what they hold
            a, b = torch.load(path, weights_only=True), torch.load(got[name], weights_only=True)
            assert repr(a) == repr(b), name
        elif name.endswith(".safetensors"):  # the metadata's order differs from process to process
            from safetensors import safe_open

            with safe_open(path, "pt") as a, safe_open(got[name], "pt") as b:
                assert a.metadata() == b.metadata() and a.keys() == b.keys(), name
                assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys()), name  # noqa: SIM118
        elif name == "config.yaml":  # the same but for the output folder
            a, b = yaml.safe_load(path.read_text()), yaml.safe_load(got[name].read_text())
            assert a["log"].pop("output_dir") != b["log"].pop("output_dir") and a == b
        else:
            assert path.read_bytes() == got[name].read_bytes(), name


def test_log_formats_takes_tools(tmp_path, tiny_model_dir, images):
    cfg = tiny_config(tmp_path, tiny_model_dir, log={"formats": ["kohya", "invokeai", "sd-concepts"]})
    result = runner.invoke(app, ["train", str(images), "--init-word", "cat", "--config", str(cfg),
                                 "--set", "log.image_every=0"])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "logs").iterdir()
    folder = run_dir / "embeddings"
    assert {p.name for p in folder.iterdir()} >= {"my_cat.pt", "my_cat.safetensors", "my_cat"}
    pt = load_embedding(folder / "my_cat.pt")
    assert load_embedding(folder / "my_cat.safetensors").source_format == "kohya"
    concept = load_embedding(folder / "my_cat")
    assert concept.source_format == "sd-concepts-folder" and concept.tokens[0].name == "*"
    assert torch.equal(concept.tokens[0].vectors, pt.tokens[0].vectors)
