"""Memory savings in training (issue 26): casting frozen weights without a second copy, giving memory-mapped pages
back, offloading the VAE, bf16 weights on the CPU and `train.max_memory`. Each setting trains what the plain run
trains (bit for bit where the arithmetic is the same, within bf16's rounding where the dtype changes), and an
offloaded VAE still draws the image logs and the validation prompts, and survives a resume."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from textinv import config as cfgmod
from textinv.cli import app
from textinv.errors import ConfigError
from textinv.formats.files import load_embedding
from textinv.models import memory
from textinv.reporting import Reporter
from textinv.runs import Run
from textinv.training import budget, setup
from textinv.training import loop as trainmod

from .test_train import library_config, make_images, read_losses, tiny_config

runner = CliRunner()
LINUX = pytest.mark.skipif(sys.platform != "linux", reason="pages are given back on Linux only")
# bf16 keeps 8 bits of mantissa: a loss through bf16 weights and activations differs from float32's in the third
# digit (measured on the tiny models: at most 2e-3 relative over 6 steps)
BF16_REL = 1e-2


@pytest.fixture
def images(tmp_path) -> Path:
    return make_images(tmp_path / "my_cat")


def _mapped_module(tmp_path: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor], int]:
    """A 16 MiB module whose weights are memory-mapped from a safetensors file, as diffusers loads them."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(4)]).requires_grad_(False)
    path = tmp_path / "weights.safetensors"
    save_file(module.state_dict(), path)
    expected = {k: v.clone() for k, v in module.state_dict().items()}
    module.load_state_dict(load_file(path), assign=True)
    return module, expected, path.stat().st_size


@LINUX
def test_cast_frozen_is_to_dtype_and_gives_each_tensors_file_pages_back(tmp_path):
    module, expected, size = _mapped_module(tmp_path)
    assert sum(float(p.sum()) for p in module.parameters())  # every page read: resident, as after a forward pass
    released = memory.cast_frozen(module, torch.bfloat16)
    for name, value in module.state_dict().items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, expected[name].to(torch.bfloat16)), name
    assert released >= 0.95 * size  # the float32 pages went back to the file as each copy was made


@LINUX
def test_release_gives_pages_back_and_the_module_computes_the_same(tmp_path):
    module, expected, size = _mapped_module(tmp_path)
    x = torch.randn(2, 1024)
    before = module(x)
    assert memory.release([module]) >= 0.95 * size
    assert torch.equal(module(x), before)  # read again from the file
    assert all(torch.equal(v, expected[k]) for k, v in module.state_dict().items())
    fresh = torch.nn.Linear(64, 64)  # anonymous memory: never handed back
    weight = fresh.weight.detach().clone()
    assert memory.release([fresh]) == 0 and torch.equal(fresh.weight, weight)


def test_freed_memory_goes_back_to_the_system_on_glibc():
    assert memory.return_freed_memory() is (sys.platform == "linux" and __import__("platform").libc_ver()[0] == "glibc")


def _files(run_dir: Path, folder: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / folder).iterdir())}


def test_offload_trains_and_logs_exactly_what_the_plain_run_does(tmp_path, tiny_model_dir, images, monkeypatch):
    sets = ("train.max_steps=4", "log.image_every=2", "log.val_loss_every=2", "log.prompts=['a painting of *']")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = trainmod.train(library_config(tmp_path / "a", tiny_model_dir, images, *sets))
    uses = []
    back = memory.Offload.back

    def spy(self):
        uses.append([m.__class__.__name__ for m in self.modules])
        return back(self)

    monkeypatch.setattr(memory.Offload, "back", spy)
    offloaded = trainmod.train(library_config(tmp_path / "b", tiny_model_dir, images, *sets, "train.offload=true"))
    assert uses == [["AutoencoderKL"]] * 4  # image logs and validation prompts at steps 2 and 4
    assert offloaded.losses == plain.losses
    assert read_losses(offloaded.run_dir) == read_losses(plain.run_dir)
    assert _files(offloaded.run_dir, "images") == _files(plain.run_dir, "images")  # every image log, to the byte
    assert (offloaded.run_dir / "validation.csv").read_text() == (plain.run_dir / "validation.csv").read_text()
    assert torch.equal(load_embedding(offloaded.embedding_path).tokens[0].vectors,
                       load_embedding(plain.embedding_path).tokens[0].vectors)


def test_offload_resumes_to_the_plain_runs_end(tmp_path, tiny_model_dir, images):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sets = ("log.save_every=2", "log.image_every=2")
    plain = trainmod.train(library_config(tmp_path / "a", tiny_model_dir, images, *sets, "train.max_steps=4"))
    first = trainmod.train(library_config(tmp_path / "b", tiny_model_dir, images, *sets, "train.max_steps=2",
                                          "train.offload=true"))
    resumed = trainmod.train(Run.open(first.run_dir).config(max_steps=4), resume=first.run_dir)
    assert resumed.losses == plain.losses[2:]
    assert torch.equal(load_embedding(resumed.embedding_path).tokens[0].vectors,
                       load_embedding(plain.embedding_path).tokens[0].vectors)
    assert _files(first.run_dir, "images") == _files(plain.run_dir, "images")


def test_bf16_weights_on_the_cpu_follow_the_float32_losses(tmp_path, tiny_model_dir, images, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sets = ("train.max_steps=6", "log.image_every=3")
    plain = trainmod.train(library_config(tmp_path / "a", tiny_model_dir, images, *sets))
    dtypes = []
    real = trainmod.compute_loss

    def spy(unet, condition, *args, **kwargs):
        frozen = {p.dtype for n, p in condition.encoders[0][1].named_parameters() if not n.endswith("learned")}
        dtypes.append((unet.dtype, frozen, unet.training))
        return real(unet, condition, *args, **kwargs)

    monkeypatch.setattr(trainmod, "compute_loss", spy)
    low = trainmod.train(library_config(tmp_path / "b", tiny_model_dir, images, *sets, "train.mixed_precision=bf16"))
    assert dtypes == [(torch.bfloat16, {torch.bfloat16}, False)] * 6
    assert low.losses == pytest.approx(plain.losses, rel=BF16_REL)
    assert low.losses != plain.losses  # the arithmetic did change
    vectors = load_embedding(low.embedding_path).tokens[0].vectors
    assert vectors.dtype == torch.float32  # the learned rows stay float32
    # AdamW moves each component by about the learning rate (1e-2) a step; bf16 gradients move it within 5e-3 of
    # where float32's do after 6 steps (measured: 1.3e-3 at most)
    assert torch.allclose(vectors, load_embedding(plain.embedding_path).tokens[0].vectors, rtol=0, atol=5e-3)


# --- train.max_memory ------------------------------------------------------------------------------------------


def _fake_estimate(peaks: dict[tuple, float]):
    def estimate(settings):
        key = (settings.precision, settings.offload, settings.checkpointing)
        return budget.Estimate(before=0, weights=int(peaks[key] * budget.GIB), activations=0, encode=0)

    return estimate


def test_a_budget_takes_the_cheapest_settings_that_fit():
    fp32, bf16 = None, torch.bfloat16
    peaks = {(fp32, False, False): 9, (fp32, True, False): 8, (bf16, True, False): 5, (bf16, True, True): 3}
    wanted = budget.Settings(precision=None, offload=False, checkpointing=False)
    for gib, expected in ((10, (fp32, False, False)), (8, (fp32, True, False)), (6, (bf16, True, False)),
                          (3, (bf16, True, True))):
        settings, est = budget.choose(gib, wanted, True, _fake_estimate(peaks))
        assert (settings.precision, settings.offload, settings.checkpointing) == expected, gib
        assert est.peak == peaks[expected] * budget.GIB
    with pytest.raises(ConfigError, match=r"train.max_memory is 2 GiB, but even the leanest settings \(frozen "
                                          r"weights in bf16, VAE offloaded .*gradient checkpointing on\) are "
                                          r"estimated at 3.0 GiB"):
        budget.choose(2, wanted, True, _fake_estimate(peaks))
    # train.mixed_precision no: the weights stay float32 whatever the budget
    no_cast = {(fp32, False, False): 9, (fp32, True, False): 8, (fp32, True, True): 4}
    settings, _ = budget.choose(5, wanted, False, _fake_estimate(no_cast))
    assert (settings.precision, settings.offload, settings.checkpointing) == (fp32, True, True)
    # what the config turned on stays on
    settings, _ = budget.choose(100, budget.Settings(None, False, True), True, lambda s: budget.Estimate(0, 0, 0, 0))
    assert settings.checkpointing


def test_a_budget_run_says_what_it_chose_and_trains_as_those_settings(tmp_path, tiny_model_dir, images,
                                                                      monkeypatch):
    for d in ("plain", "lean", "budget", "roomy"):
        (tmp_path / d).mkdir()
    sets = ("train.max_steps=3", "log.image_every=3")
    plain = trainmod.train(library_config(tmp_path / "plain", tiny_model_dir, images, *sets))
    lean = trainmod.train(library_config(tmp_path / "lean", tiny_model_dir, images, *sets, "train.offload=true",
                                         "train.mixed_precision=bf16", "train.gradient_checkpointing=true"))
    fp32, bf16 = None, torch.bfloat16
    peaks = {(fp32, False, False): 9, (fp32, True, False): 8, (bf16, True, False): 5, (bf16, True, True): 3}
    monkeypatch.setattr(budget, "estimate", lambda pipe, settings, *a: _fake_estimate(peaks)(settings))
    said = []

    class Listen(Reporter):
        def message(self, text):
            said.append(text)

    checkpointed = []
    real = trainmod.compute_loss
    monkeypatch.setattr(trainmod, "compute_loss",
                        lambda unet, *a, **k: checkpointed.append(unet.is_gradient_checkpointing) or real(unet, *a, **k))
    chosen = trainmod.train(library_config(tmp_path / "budget", tiny_model_dir, images, *sets, "train.max_memory=4"),
                            reporter=Listen())
    assert ("memory budget 4 GiB: frozen weights in bf16, VAE offloaded once the latents are cached, gradient "
            "checkpointing on; estimated peak 3.0 GiB") in "\n".join(said)
    assert checkpointed == [True] * 3
    assert chosen.losses == lean.losses  # the budget run is the lean settings' run, step for step
    assert chosen.losses == pytest.approx(plain.losses, rel=BF16_REL)
    roomy = trainmod.train(library_config(tmp_path / "roomy", tiny_model_dir, images, *sets, "train.max_memory=64"))
    assert roomy.losses == plain.losses  # a budget the plain settings fit changes nothing


@pytest.mark.parametrize("value, message", [
    ("0", "`train.max_memory` is 0.0; it must be above 0 and at most 4096"),
    ("-2", "`train.max_memory` is -2.0; it must be above 0"),
    ("5000", "`train.max_memory` is 5000.0; it must be above 0 and at most 4096"),
    (".nan", "`train.max_memory` is nan; it must be a finite number"),
])
def test_max_memory_bounds(value, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("`", "`")):
        cfgmod.build_config(None, [f"train.max_memory={value}"])


def test_max_memory_flag_reaches_the_config_and_a_resume_keeps_the_runs(tmp_path, tiny_model_dir, images):
    cfg = str(tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 1}, log={"image_every": 0}))
    result = runner.invoke(app, ["train", str(images), "-i", "cat", "-c", cfg, "--max-memory", "64"])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "logs").iterdir()
    assert Run.open(run_dir).config().train.max_memory == 64
    again = runner.invoke(app, ["train", "--resume", str(run_dir), "--max-memory", "8"])
    assert again.exit_code == 1 and "drop --max-memory" in again.stderr


def test_the_activation_estimate_of_the_sd15_unet():
    """SD1.5's UNet at 512 px (64 x 64 latents), batch 1: 1.6 GB measured above the weights on the CPU (README
    "Training speed"); the estimate counts what autograd keeps, on the meta device."""
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import random_models

    config = {**random_models.SD["sd15"]["unet"], "sample_size": 64}
    unet = type("Unet", (), {"config": json.loads(json.dumps(config))})()
    plain = budget.step_activations(unet, 1, 64, torch.float32, checkpointing=False)
    assert 1.2 * budget.GIB < plain < 1.6 * budget.GIB
    assert budget.step_activations(unet, 1, 64, torch.bfloat16, checkpointing=False) == plain // 2
    assert budget.step_activations(unet, 2, 64, torch.float32, checkpointing=False) == pytest.approx(2 * plain, rel=0.02)
    checkpointed = budget.step_activations(unet, 1, 64, torch.float32, checkpointing=True)
    assert 0.15 * plain < checkpointed < 0.35 * plain


# --- SDXL --------------------------------------------------------------------------------------------------------


def test_sdxl_offload_keeps_image_logs_validation_and_resume(tmp_path, tiny_sdxl_dir, images):
    sets = ("data.resolution=32", "optim.gradient_accumulation_steps=1", "log.sample_steps=2", "log.num_images=1",
            "log.save_every=2", "log.image_every=2", "log.val_loss_every=2", "log.prompts=['a painting of *']")

    def config(folder: str, *more: str):
        (tmp_path / folder).mkdir()
        return cfgmod.build_config(None, [f"model.source={tiny_sdxl_dir}", f"log.output_dir={tmp_path / folder}",
                                          "personalization.initializer_words=[cat]", *sets, *more],
                                   **{"data.paths": [str(images)]})

    plain = trainmod.train(config("plain", "train.max_steps=4"))
    first = trainmod.train(config("offload", "train.max_steps=2", "train.offload=true"))
    resumed = trainmod.train(Run.open(first.run_dir).config(max_steps=4), resume=first.run_dir)
    assert first.losses + resumed.losses == plain.losses
    assert _files(first.run_dir, "images") == _files(plain.run_dir, "images")
    a, b = load_embedding(resumed.embedding_path).tokens[0], load_embedding(plain.embedding_path).tokens[0]
    assert torch.equal(a.vectors, b.vectors) and torch.equal(a.vectors_2, b.vectors_2)
    low = trainmod.train(config("bf16", "train.max_steps=4", "train.mixed_precision=bf16"))
    assert low.losses == pytest.approx(plain.losses, rel=BF16_REL)


def test_prepare_model_casts_on_the_cpu_before_moving(tiny_sdxl_dir, monkeypatch):
    """The frozen weights are cast where they were loaded (memory-mapped, on the CPU) and only then moved, so the
    device never holds a float32 copy; the VAE stays float32."""
    cfg = cfgmod.build_config(None, [f"model.source={tiny_sdxl_dir}", "data.resolution=32",
                                     "personalization.initializer_words=[cat]"])
    seen = []
    real = memory.cast_frozen
    monkeypatch.setattr(memory, "cast_frozen", lambda m, dtype: seen.append((type(m).__name__, m.device.type))
                        or real(m, dtype))
    model = setup.prepare_model(cfg.model, cfg.personalization, 32, False, torch.device("cpu"), torch.bfloat16,
                                Reporter())
    assert seen == [("CLIPTextModel", "cpu"), ("CLIPTextModelWithProjection", "cpu"), ("UNet2DConditionModel", "cpu")]
    for module in (model.pipe.unet, model.pipe.text_encoder, model.pipe.text_encoder_2):
        assert {p.dtype for n, p in module.named_parameters() if not n.endswith("learned")} == {torch.bfloat16}
    assert model.pipe.vae.dtype == torch.float32 and model.learned.dtype == torch.float32
