"""`textinv train` on the tiny pipeline: the run folder, what is learned and what is not, resume, faults."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from textinv import config as cfgmod
from textinv import train as trainmod
from textinv.cli import app
from textinv.embeddings import load_embedding
from textinv.reporting import Reporter

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
    assert images_written == {f"{k}_gs-{s:06d}.png" for k in IMAGE_KEYS for s in (3, 6)}
    with Image.open(run_dir / "images" / "samples_gs-000006.png") as im:
        assert im.size == (64, 32)  # num_images=2 side by side at 32 px
    assert [s for s, _, _ in read_losses(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert (run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "state.json").is_file()

    emb = load_embedding(run_dir / "embeddings" / "my_cat.pt")
    assert [t.name for t in emb.tokens] == ["*"]
    assert emb.tokens[0].vectors.shape == (1, 32) and emb.tokens[0].vectors.dtype == torch.float32
    assert emb.step == 6 and emb.base_model == str(tiny_model_dir)
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
    monkeypatch.setattr(trainmod.models, "load_pipeline", lambda *args, **kwargs: pipe)
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

    from textinv.data import load_folder

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    tok, te = pipe.tokenizer, pipe.text_encoder
    first = len(tok)
    trainmod.add_new_tokens(tok, ["<x>"], first)
    base = te.get_input_embeddings()
    trainmod.replace_module(te, base, trainmod.SplicedEmbedding(base, vectors, first))
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
    whole = runner.invoke(app, ["train", str(images), "-i", "cat", "-c", cfg, "-n", "whole", *sets])
    assert whole.exit_code == 0, whole.output

    monkeypatch.setattr(trainmod, "compute_loss", _InterruptAt(call=3))
    cut = runner.invoke(app, ["train", str(images), "-i", "cat", "-c", cfg, "-n", "cut", *sets])
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
    resumed = trainmod.train(cfgmod.config_for_resume(whole.run_dir), resume=whole.run_dir)
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
        "--set", "personalization.num_vectors_per_token=2", "-n", "pets"])
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
    const = trainmod.lr_lambda("constant", 2, 10)
    assert [const(s) for s in range(4)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    lin = trainmod.lr_lambda("linear", 0, 10)
    assert [lin(0), lin(5), lin(10)] == pytest.approx([1.0, 0.5, 0.0])
    cos = trainmod.lr_lambda("cosine", 0, 10)
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
        (["--report-to", "wandb"], "`log.report_to` is 'wandb'; it must be one of none | tensorboard"),
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
    assert result.exit_code == 1 and "pass a folder of images" in result.stderr


def test_captions_replace_templates_and_must_name_the_placeholder(tmp_path):
    folder = make_images(tmp_path / "pics", 2)
    (folder / "img0.txt").write_text("a photo of [name] on a sofa\n")
    cfg = cfgmod.build_config(None, ["data.resolution=32"], **{"data.paths": [str(folder)],
                                                               "personalization.placeholder_strings": ["<c>"]})
    messages = []

    class R(Reporter):
        def message(self, text):
            messages.append(text)

    images, items = trainmod.build_items(cfg, R())
    assert [it.prompts for it in items][0] == ["a photo of <c> on a sofa"]
    assert len(items[1].prompts) == 27 and items[1].prompts[0] == "a photo of a <c>"
    assert trainmod.expand_placeholders("a photo of <c>, big", {"<c>": "<t-0> <t-1>"}) == "a photo of <t-0> <t-1>, big"
    assert messages == []

    (folder / "img1.txt").write_text("a photo of a sofa")
    with pytest.raises(trainmod.DataError, match="caption img1.txt does not mention the placeholder"):
        trainmod.build_items(cfg, R())
    two = cfgmod.build_config(None, ["data.resolution=32"], **{
        "data.paths": [str(folder)], "personalization.placeholder_strings": ["<a>", "<b>"],
        "personalization.initializer_words": ["cat", "dog"]})
    (folder / "img1.txt").unlink()
    with pytest.raises(trainmod.DataError, match="img1.png has no caption file, and with 2 placeholders in one folder"):
        trainmod.build_items(two, R())


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
