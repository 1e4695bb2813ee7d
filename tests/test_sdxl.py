"""SDXL end to end on a tiny SDXL pipeline (two CLIP text encoders, 32 and 64 wide; a `text_time` UNet): training
learns a row in both encoders and nothing else, the files load back exactly, diffusers' own loader gives the same
images as `textinv generate`, and the family checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from tests.test_train import make_images
from textinv.cli import app
from textinv.config import build_config
from textinv.errors import ModelError
from textinv.formats import families
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import load_embedding, save_embedding
from textinv.generation.metadata import read_parameters
from textinv.hashing import embedding_hash
from textinv.models import peek, tokens
from textinv.models.conditioning import SDXLConditioning, conditioning_for, is_sdxl
from textinv.models.denoiser import denoiser_for
from textinv.models.embeddings import add_embeddings
from textinv.models.loading import load_pipeline
from textinv.training import loop as trainmod
from textinv.training import setup

runner = CliRunner()
FAST = ["--set", "data.resolution=32", "--set", "optim.gradient_accumulation_steps=1", "--set", "log.sample_steps=2",
        "--set", "log.num_images=1", "--set", "log.save_every=0"]
IMAGE_KEYS = ("conditioning", "inputs", "reconstruction", "samples", "samples_scaled", "init_word")


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _train(images: Path, model: Path, out: Path, *extra, steps: int = 3):
    return _run("train", images, "--init-word", "cat", "--model", model, "--max-steps", steps, "-o", out, *FAST,
                *extra)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def _sdxl_embedding(name: str, n: int, seed: int) -> Embedding:
    g = torch.Generator().manual_seed(seed)
    return Embedding(tokens=[Token(name, torch.randn(n, 32, generator=g) * 0.3, torch.randn(n, 64, generator=g) * 0.3)],
                     name=name.strip("<>"))


@pytest.fixture(scope="module")
def sdxl_run(tiny_sdxl_dir, tmp_path_factory) -> Path:
    """One 3-step CLI run on the tiny SDXL model with no --config (the family picks sdxl-finetune)."""
    root = tmp_path_factory.mktemp("sdxl-run")
    images = make_images(root / "my_cat")
    result = _train(images, tiny_sdxl_dir, root / "logs", "--set", "log.image_every=3",
                    "--set", "log.formats=[pt, bin, safetensors]")
    assert result.exit_code == 0, result.output
    (run_dir,) = (root / "logs").iterdir()
    assert Path(result.stdout.strip()) == run_dir / "embeddings" / "my_cat.safetensors"
    return run_dir


# --- training --------------------------------------------------------------------------------------------------


def test_train_picks_sdxl_finetune_and_writes_clip_l_and_clip_g(sdxl_run, tiny_sdxl_dir):
    saved = yaml.safe_load((sdxl_run / "config.yaml").read_text())
    assert saved["model"]["family"] == "SDXL" and saved["optim"]["learning_rate"] == 5e-4
    assert {p.name for p in (sdxl_run / "embeddings").iterdir()} == {
        "my_cat-3.pt", "my_cat.pt", "my_cat.bin", "my_cat.safetensors"}
    with safe_open(str(sdxl_run / "embeddings" / "my_cat.safetensors"), framework="pt") as f:
        assert set(f.keys()) == {"clip_l", "clip_g"}
        assert f.get_tensor("clip_l").shape == (1, 32) and f.get_tensor("clip_g").shape == (1, 64)
    emb = load_embedding(sdxl_run / "embeddings" / "my_cat.safetensors")  # the run's embedding, with metadata
    assert [t.name for t in emb.tokens] == ["*"] and emb.is_sdxl
    assert emb.step == 3 and emb.base_model == tiny_sdxl_dir.name and emb.init_words == {"*": "cat"}
    for other in ("my_cat.bin", "my_cat.pt"):
        again = load_embedding(sdxl_run / "embeddings" / other).tokens[0]
        assert torch.equal(again.vectors, emb.tokens[0].vectors) and torch.equal(again.vectors_2, emb.tokens[0].vectors_2)
    # both rows started at `cat` in their own encoder and both moved
    pipe = load_pipeline(tiny_sdxl_dir, device="cpu")
    for tokenizer, encoder, learned in ((pipe.tokenizer, pipe.text_encoder, emb.tokens[0].vectors),
                                        (pipe.tokenizer_2, pipe.text_encoder_2, emb.tokens[0].vectors_2)):
        cat = encoder.get_input_embeddings().weight[tokenizer("cat", add_special_tokens=False).input_ids[0]]
        assert 0 < (learned[0] - cat.detach()).abs().max() < 5e-4 * 3 * 1.01  # Adam: at most ~lr per step
    written = {p.name for p in (sdxl_run / "images").iterdir()}
    assert written == {f"{k}_gs-000003.png" for k in IMAGE_KEYS} | {"conditioning_gs-000003.txt"}
    shape = _pixels(sdxl_run / "images" / "samples_gs-000003.png").shape  # issue 23: enlarged, labelled
    assert min(shape[:2]) >= 256 and shape[2] == 3


def test_the_file_loads_back_into_both_encoders_exactly(sdxl_run, tiny_sdxl_dir):
    emb = load_embedding(sdxl_run / "embeddings" / "my_cat.safetensors")
    pipe = load_pipeline(tiny_sdxl_dir, device="cpu")
    add_embeddings(pipe, [(sdxl_run / "embeddings" / "my_cat.safetensors", emb)])
    (tid,) = pipe.textinv.embeddings["*"].token_ids
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[tid].detach(), emb.tokens[0].vectors[0])
    assert torch.equal(pipe.text_encoder_2.get_input_embeddings().weight[tid].detach(), emb.tokens[0].vectors_2[0])


def test_the_gradient_reaches_both_encoders_new_rows_and_nothing_else(tiny_sdxl_dir):
    cfg = build_config("sdxl-finetune", ["data.resolution=32", f"model.source={tiny_sdxl_dir}"])
    pipe = setup.load_frozen(cfg.model, cfg.data.resolution, cfg.train.gradient_checkpointing,
                             torch.device("cpu"))
    cond = conditioning_for(pipe, 32)
    assert isinstance(cond, SDXLConditioning) and cond.widths == [32, 64]
    first = len(pipe.tokenizer)
    for tokenizer, _ in cond.encoders:
        tokens.add_new_tokens(tokenizer, ["<new>"], first)
    learned = torch.nn.Parameter(torch.randn(1, 96) * 0.1)
    for (_, te), columns in zip(cond.encoders, cond.columns(), strict=True):
        base = te.get_input_embeddings()
        tokens.replace_module(te, base, tokens.SplicedEmbedding(base, learned, first, columns))
    ids = torch.cat([cond.tokenize(["a photo of <new>"]), cond.tokenize(["a photo of cat"])])
    assert ids.shape == (2, 2, 77) and not torch.equal(ids[:, 0], ids[:, 1])  # the two tokenizers pad differently
    noisy = torch.randn(2, 4, 16, 16)
    loss = trainmod.compute_loss(denoiser_for(pipe), cond, noisy, torch.tensor([10, 500]), ids, torch.randn_like(noisy),
                                 None, torch.device("cpu"))
    loss.backward()
    assert learned.grad[0, :32].abs().sum() > 0 and learned.grad[0, 32:].abs().sum() > 0  # clip_l and clip_g
    frozen = [p for m in (pipe.text_encoder, pipe.text_encoder_2, pipe.unet, pipe.vae) for p in m.parameters()
              if p is not learned]
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
    hidden, added = cond.encode(ids)
    assert hidden.shape == (2, 77, 96) and added["text_embeds"].shape == (2, 64)
    assert added["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]] * 2


def test_every_other_weight_is_bit_exact_after_training(tiny_sdxl_dir, tmp_path, monkeypatch):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    parts = ("text_encoder", "text_encoder_2", "unet", "vae")
    before = {f"{n}.{k}": v.clone() for n in parts for k, v in getattr(pipe, n).state_dict().items()}
    monkeypatch.setattr(setup, "load_pipeline", lambda *args, **kwargs: pipe)
    cfg = build_config(None, ["data.resolution=32", "optim.gradient_accumulation_steps=1", "log.image_every=0",
                              "optim.learning_rate=0.05"], **{
        "data.paths": [str(make_images(tmp_path / "imgs"))], "model.source": str(tiny_sdxl_dir),
        "train.max_steps": 2, "log.output_dir": str(tmp_path / "logs"), "personalization.initializer_words": ["cat"]})
    trainmod.train(cfg)
    after = {f"{n}.{k}": v for n in parts for k, v in getattr(pipe, n).state_dict().items()}
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "a frozen weight changed"


def test_resume_continues_exactly(sdxl_run, tiny_sdxl_dir, tmp_path):
    images = make_images(tmp_path / "my_cat")
    first = _train(images, tiny_sdxl_dir, tmp_path / "logs", "--set", "log.image_every=0", steps=2)
    assert first.exit_code == 0, first.output
    (run_dir,) = (tmp_path / "logs").iterdir()
    more = _run("train", "--resume", run_dir, "--max-steps", 3)
    assert more.exit_code == 0, more.output
    resumed = load_embedding(run_dir / "embeddings" / "my_cat.safetensors").tokens[0]
    whole = load_embedding(sdxl_run / "embeddings" / "my_cat.safetensors").tokens[0]
    assert torch.equal(resumed.vectors, whole.vectors) and torch.equal(resumed.vectors_2, whole.vectors_2)


# --- the family checks -------------------------------------------------------------------------------------------


def test_an_sd1_config_on_sdxl_and_the_reverse_are_refused_before_anything_is_written(
        tiny_sdxl_dir, tiny_model_dir, tmp_path):
    images = make_images(tmp_path / "imgs")
    for model, config, use in ((tiny_sdxl_dir, "v1-finetune", "sdxl-finetune"),
                               (tiny_sdxl_dir, "v2-finetune", "sdxl-finetune"),
                               (tiny_model_dir, "sdxl-finetune", "v1-finetune")):
        result = _train(images, model, tmp_path / "logs", "--config", config)
        assert result.exit_code == 1
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: the config is for") and line.endswith(f"use --config {use}")
    two = _run("train", images, images, "-i", "cat", "-i", "dog", "-p", "<a>", "-p", "<b>", "--model", tiny_sdxl_dir,
               "-o", tmp_path / "logs", *FAST, "--set", "log.formats=[pt]")
    assert two.exit_code == 1 and "train one placeholder per run" in two.stderr
    assert not (tmp_path / "logs").exists()


def test_the_default_config_follows_the_model(tiny_sdxl_dir, tiny_model_dir, tmp_path):
    assert peek.default_config(str(tiny_sdxl_dir)) == "sdxl-finetune"
    assert peek.default_config(str(tiny_model_dir)) == "v1-finetune"
    assert peek.default_config(str(tmp_path / "missing")) == "v1-finetune"
    assert build_config(None, [f"model.source={tiny_sdxl_dir}"]).data.resolution == 1024
    assert build_config(None, None).model.family == "SD1.x"
    assert build_config(None, ["model.family=null"]).model.family is None
    assert is_sdxl(load_pipeline(tiny_sdxl_dir, device="cpu"))
    assert not is_sdxl(load_pipeline(tiny_model_dir, device="cpu"))


def test_an_sd1_embedding_on_sdxl_and_the_reverse_name_both_families():
    sd1 = Embedding(tokens=[Token("<a>", torch.zeros(1, 768))])
    xl = Embedding(tokens=[Token("<b>", torch.zeros(1, 768), torch.zeros(1, 1280))])
    with pytest.raises(ModelError, match=r"SD1\.x \(768-dim\) but the model is SDXL \(768\+1280-dim\)"):
        families.check_fits(Path("a.pt"), "<a>", sd1.tokens[0].widths, (768, 1280))
    with pytest.raises(ModelError, match=r"SDXL \(768\+1280-dim\) but the model is SD1\.x \(768-dim\)"):
        families.check_fits(Path("b.safetensors"), "<b>", xl.tokens[0].widths, (768, None))


# --- generating ------------------------------------------------------------------------------------------------


def test_diffusers_given_the_two_vectors_makes_the_same_image_as_textinv_generate(sdxl_run, tiny_sdxl_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    path = sdxl_run / "embeddings" / "my_cat.safetensors"
    result = _run("generate", "a photo of <my-cat>", "-e", path, "--token", "<my-cat>", "--model", tiny_sdxl_dir,
                  "-s", 3, "-S", 5,
                  "-W", 32, "-H", 32, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    ours = _pixels(Path(json.loads(result.stdout.splitlines()[-1])["path"]))

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    state = load_file(str(path))  # the documented way: each vector into its own encoder
    pipe.load_textual_inversion(state["clip_g"], token="<my-cat>", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    pipe.load_textual_inversion(state["clip_l"], token="<my-cat>", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    theirs = pipe("a photo of <my-cat>", num_inference_steps=3, guidance_scale=7.5, width=32, height=32,
                  generator=torch.Generator("cpu").manual_seed(5)).images[0]
    assert np.array_equal(ours, np.asarray(theirs))
    without = pipe("a photo of cat", num_inference_steps=3, guidance_scale=7.5, width=32, height=32,
                   generator=torch.Generator("cpu").manual_seed(5)).images[0]
    assert not np.array_equal(ours, np.asarray(without))  # the comparison can fail


def test_several_sdxl_embeddings_txt2img_and_img2img_with_metadata(tiny_sdxl_dir, tmp_path):
    a = save_embedding(_sdxl_embedding("<xa>", 2, seed=1), tmp_path / "xa.safetensors", format="safetensors")
    b = save_embedding(_sdxl_embedding("<xb>", 1, seed=2), tmp_path / "xb.pt", format="pt")
    out = tmp_path / "out"
    # an SDXL .pt holds only {clip_l, clip_g}, so its word is the file's stem (as in AUTOMATIC1111) unless --token
    result = _run("generate", "a photo of <xa> in the style of <xb>", "--model", tiny_sdxl_dir, "-e", a, "-e", b,
                  "--token", "<xa>", "--token", "<xb>", "-s", 2, "-S", 3, "-W", 32, "-H", 32, "-o", out)
    assert result.exit_code == 0, result.output
    assert "placeholders: <xa> <xb>" in result.stderr
    params = read_parameters(out / "000001.3.png")
    assert params["TI hashes"] == f"<xa>: {embedding_hash(a)}, <xb>: {embedding_hash(b)}"
    assert params["Model"] == tiny_sdxl_dir.name
    init = tmp_path / "init.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(init)
    again = _run("img2img", "a photo of <xa>", "--init-img", init, "--model", tiny_sdxl_dir, "-e", a, "-s", 4, "-S", 7,
                 "-o", out)
    assert again.exit_code == 0, again.output
    params = read_parameters(out / "000002.7.png")
    assert params["Denoising strength"] == "0.5" and params["TI hashes"] == f"<xa>: {embedding_hash(a)}"
    sd1 = save_embedding(Embedding(tokens=[Token("<s1>", torch.zeros(1, 32))]), tmp_path / "s1.pt", format="pt")
    refused = _run("generate", "a photo of <s1>", "--model", tiny_sdxl_dir, "-e", sd1, "-s", 2, "-o", out)
    assert refused.exit_code == 1
    line = refused.stderr.strip().splitlines()[-1]  # after "loading model ..."
    assert line.startswith("error: s1.pt: embedding <s1> is 32-dim") and "the model is 32+64-dim" in line


def test_dream_prompt_on_sdxl(tiny_sdxl_dir, tmp_path, monkeypatch):
    import builtins

    from textinv.generation import dream

    a = save_embedding(_sdxl_embedding("<xa>", 1, seed=1), tmp_path / "xa.safetensors", format="safetensors")
    lines = iter(['"a photo of <xa>" -s2 -S4 -W32 -H32', "q"])
    monkeypatch.setattr(dream, "stdin_is_terminal", lambda: True)
    monkeypatch.setattr(builtins, "input", lambda prompt: next(lines))
    monkeypatch.setenv("HOME", str(tmp_path))
    result = _run("--quiet", "generate", "--model", tiny_sdxl_dir, "-e", a, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert read_parameters(tmp_path / "out" / "000001.4.png")["TI hashes"] == f"<xa>: {embedding_hash(a)}"


# --- learning ----------------------------------------------------------------------------------------------------


def _denoising_error(pipe, folder: Path, prompt: str, draws: int = 32) -> float:
    """Mean squared error of the UNet's noise prediction for the pictures in `folder` under `prompt`, over fixed
    (noise, timestep) draws: the diffusion loss, a bound on -log p(pictures | prompt). Lower: the prompt explains
    the pictures better. The prompt goes through diffusers' own `encode_prompt`, not textinv's training code."""
    from diffusers import DDPMScheduler

    from textinv.models.conditioning import time_ids
    from textinv.pictures import load_folder

    found, _ = load_folder(folder, 32, center_crop=True)
    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(1234)
    total = 0.0
    with torch.no_grad():
        latents = pipe.vae.encode(torch.stack([f.pixels for f in found])).latent_dist.mean
        latents = latents * pipe.vae.config.scaling_factor
        hidden, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
        n = len(latents)
        added = {"text_embeds": pooled.expand(n, -1), "time_ids": time_ids(32).expand(n, -1)}
        for _ in range(draws):
            noise = torch.randn(latents.shape, generator=g)
            t = torch.randint(0, schedule.config.num_train_timesteps, (n,), generator=g)
            pred = pipe.unet(schedule.add_noise(latents, noise, t), t, hidden.expand(n, -1, -1),
                             added_cond_kwargs=added).sample
            total += float(torch.nn.functional.mse_loss(pred, noise))
    return total / draws


@pytest.mark.slow
def test_sdxl_learning_check_on_the_sdxl_toy(tmp_path):
    """On the SDXL-shaped toy (toy VAE, a UNet fitted to the toy world without the purple triangle), `*` learned
    from 4 purple triangles explains 4 other purple triangles better than the init word does, and its gain there is
    larger than on pictures of other pairs: it learned the concept, not a generally better word."""
    from textinv.toy import world
    from textinv.toy.sdxl import build_sdxl_toy

    build_sdxl_toy(tmp_path / "sdxl-toy", steps=300, batch=32)
    world.write_concept(tmp_path / "train", *world.HELD_OUT[0], n=4, seed=0)
    world.write_concept(tmp_path / "held", *world.HELD_OUT[0], n=4, seed=1)
    for colour, shape in (("red", "circle"), ("blue", "square"), ("green", "cross"), ("orange", "circle")):
        world.write_concept(tmp_path / "other", colour, shape, n=1, seed=2)
    cfg = build_config(None, ["data.resolution=32", "data.batch_size=8", "optim.gradient_accumulation_steps=1",
                              "optim.learning_rate=5e-3", "optim.scale_lr=false", "log.image_every=0",
                              "log.save_every=0"], **{
        "model.source": str(tmp_path / "sdxl-toy"), "data.paths": [str(tmp_path / "train")],
        "train.max_steps": 100, "log.output_dir": str(tmp_path / "logs"),
        "personalization.initializer_words": ["shape"]})
    result = trainmod.train(cfg)

    pipe = load_pipeline(tmp_path / "sdxl-toy", device="cpu")
    add_embeddings(pipe, [(result.embedding_path, load_embedding(result.embedding_path))])
    gain = {}
    for folder in ("held", "other"):
        learned = _denoising_error(pipe, tmp_path / folder, "a photo of a *")
        init = _denoising_error(pipe, tmp_path / folder, "a photo of a shape")
        gain[folder] = (init - learned) / init
    assert gain["held"] > 0.005, gain  # closer to unseen pictures of the concept than the init word
    assert gain["held"] > gain["other"] + 0.005, gain  # and specifically to them
