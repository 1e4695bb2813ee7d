"""SD3 / SD3.5 and Flux.1 end to end on tiny pipelines built from the real diffusers/transformers classes (CLIP
encoders 32 and 64 wide, a T5 encoder 48 wide whose sentencepiece tokenizer is built with `tokenizers`): training
writes OneTrainer's layout with each encoder's width and resumes exactly, `generate` uses the result, each part goes
into its own encoder exactly where the placeholder stands, and every family check is one line before a model loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from tests.test_train import make_images
from textinv.cli import app
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import load_embedding, save_embedding
from textinv.models.embeddings import add_embeddings
from textinv.models.loading import load_pipeline

runner = CliRunner()
FAST = ["--set", "data.resolution=32", "--set", "optim.gradient_accumulation_steps=1", "--set", "log.sample_steps=2",
        "--set", "log.num_images=1", "--set", "log.save_every=0", "--set", "log.val_loss_every=0"]
WIDTHS = {"sd3": {"clip_l": 32, "clip_g": 64, "t5": 48}, "flux": {"clip_l": 32, "t5": 48}}


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _train(images: Path, model: Path, out: Path, *extra, steps: int = 3):
    return _run("train", images, "--init-word", "cat", "--model", model, "--max-steps", steps, "-o", out, *FAST, *extra)


def _keys(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_tensor(k).shape) for k in f.keys()}


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def _embedding(kind: str, name: str = "<x>", n: int = 1, seed: int = 0) -> Embedding:
    g = torch.Generator().manual_seed(seed)
    parts = {k: torch.randn(n, w, generator=g) * 0.3 for k, w in WIDTHS[kind].items()}
    return Embedding(tokens=[Token.from_parts(name, parts)], name=name.strip("<>"))


@pytest.fixture(scope="module", params=["sd3", "flux"])
def run(request, tiny_sd3_dir, tiny_flux_dir, tmp_path_factory):
    """One 3-step CLI run per architecture with no --config (the model picks sd3-finetune / flux-finetune); Flux
    trains its T5 part too."""
    kind = request.param
    model = tiny_sd3_dir if kind == "sd3" else tiny_flux_dir
    root = tmp_path_factory.mktemp(f"{kind}-run")
    images = make_images(root / "my_cat")
    extra = ["--set", "personalization.train_t5=true"] if kind == "flux" else []
    result = _train(images, model, root / "logs", "--set", "log.image_every=3", *extra)
    assert result.exit_code == 0, result.output
    (run_dir,) = (root / "logs").iterdir()
    return kind, model, run_dir


# --- training ----------------------------------------------------------------------------------------------------


def test_train_writes_onetrainers_layout_with_each_encoders_width(run):
    kind, model, run_dir = run
    import yaml

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["family"] == {"sd3": "SD3", "flux": "Flux.1"}[kind]
    assert saved["train"]["weighting_scheme"] == "logit_normal" and saved["train"]["gradient_checkpointing"]
    emb_dir = run_dir / "embeddings"
    assert {p.name for p in emb_dir.iterdir()} == {"my_cat-3.pt", "my_cat.pt", "my_cat.safetensors"}
    assert _keys(emb_dir / "my_cat.safetensors") == {k: (1, w) for k, w in WIDTHS[kind].items()}
    emb = load_embedding(emb_dir / "my_cat.safetensors")
    assert emb.source_format == "onetrainer" and emb.architecture == {"sd3": "SD3", "flux": "Flux.1"}[kind]
    assert emb.step == 3 and emb.init_words == {"*": "cat"} and [t.name for t in emb.tokens] == ["*"]
    with safe_open(str(emb_dir / "my_cat.safetensors"), framework="pt") as f:
        assert f.metadata()["textinv.family"] == emb.family  # the family travels in the metadata
    again = load_embedding(emb_dir / "my_cat.pt").tokens[0]  # the .pt holds the same parts
    assert all(torch.equal(again.parts[k], v) for k, v in emb.tokens[0].parts.items())
    pictures = {p.name for p in (run_dir / "images").iterdir()}
    assert {"samples_gs-000003.png", "init_word_gs-000003.png", "reconstruction_gs-000003.png"} <= pictures
    shape = _pixels(run_dir / "images" / "samples_gs-000003.png").shape  # issue 23: enlarged, labelled
    assert min(shape[:2]) >= 256 and shape[2] == 3


def test_only_the_asked_encoders_learn_and_t5_keeps_its_init_rows(run):
    """SD3 trains CLIP-L and CLIP-G (T5 keeps the init word's rows); Flux here trains CLIP-L and T5."""
    kind, model, run_dir = run
    tok = load_embedding(run_dir / "embeddings" / "my_cat.safetensors").tokens[0]
    pipe = load_pipeline(model, device="cpu")
    from textinv.models.loading import text_encoders

    for key, _, tokenizer, encoder in text_encoders(pipe):
        cat = encoder.get_input_embeddings().weight[tokenizer("cat", add_special_tokens=False).input_ids[0]].detach()
        moved = (tok.parts[key][0] - cat).abs().max()
        if key == "t5" and kind == "sd3":
            assert moved == 0, key  # frozen: exactly the init word's row
        else:
            assert 1e-4 < moved < 5e-4 * 3 * 1.01, key  # AdamW: about lr per step (weight decay alone: ~1e-7)


def test_generate_uses_the_trained_embedding(run, tmp_path):
    kind, model, run_dir = run
    path = run_dir / "embeddings" / "my_cat.safetensors"
    common = ["--model", model, "-s", 2, "-S", 4, "-W", 32, "-H", 32, "--json"]
    result = _run("generate", "a photo of <my-cat>", "-e", path, "--token", "<my-cat>", "-o", tmp_path / "a", *common)
    assert result.exit_code == 0, result.output
    ours = _pixels(Path(json.loads(result.stdout.splitlines()[-1])["path"]))
    plain = _run("generate", "a photo of cat", "-o", tmp_path / "b", *common)
    assert plain.exit_code == 0, plain.output
    assert not np.array_equal(ours, _pixels(Path(json.loads(plain.stdout.splitlines()[-1])["path"])))


def test_img2img_and_eval_use_the_trained_embedding(run, tmp_path):
    """img2img runs SD3's and Flux.1's img2img pipelines with the embedding spliced in (the picture differs from the
    init word's), and eval loads it into the model and scores the init word beside it (no CLIP here: no scores)."""
    kind, model, run_dir = run
    path = run_dir / "embeddings" / "my_cat.safetensors"
    init = run_dir.parent.parent / "my_cat" / sorted(p.name for p in (run_dir.parent.parent / "my_cat").iterdir())[0]
    common = ["--init-img", init, "--strength", 0.6, "--model", model, "-s", 2, "-S", 4, "-W", 32, "-H", 32, "--json"]
    pictures = []
    for prompt, extra in (("a photo of <my-cat>", ["-e", path, "--token", "<my-cat>"]), ("a photo of cat", [])):
        result = _run("img2img", prompt, *extra, "-o", tmp_path / str(len(pictures)), *common)
        assert result.exit_code == 0, result.output
        pictures.append(_pixels(Path(json.loads(result.stdout.splitlines()[-1])["path"])))
    assert pictures[0].shape == (32, 32, 3) and not np.array_equal(*pictures)
    scored = _run("eval", path, "--data", init.parent, "--model", model, "--init-word", "cat", "--clip", "none",
                  "--seeds", 1, "--steps", 1, "--json")
    assert scored.exit_code == 0, scored.output
    assert [r["label"] for r in json.loads(scored.stdout)["rows"]] == ["init word (cat)", "my_cat.safetensors"]


def test_the_dream_prompt_draws_with_a_flux_embedding(tiny_flux_dir, tmp_path, monkeypatch):
    """dream> on Flux.1: a txt2img line and an img2img line with the embedding's token, one model load."""
    import builtins

    from textinv.generation import dream

    emb = save_embedding(_embedding("flux", "<x>"), tmp_path / "x.safetensors")
    init = tmp_path / "init.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(init)
    lines = iter(['"a photo of <x>" -s2 -S 3 -W 32 -H 32', f"a sketch of <x> -s2 -S 4 --init_img={init} --strength=0.5",
                  "q"])
    monkeypatch.setattr(dream, "stdin_is_terminal", lambda: True)
    monkeypatch.setattr(builtins, "input", lambda prompt: next(lines))
    monkeypatch.setenv("HOME", str(tmp_path))
    result = _run("--quiet", "generate", "--model", tiny_flux_dir, "-e", emb, "--token", "<x>", "--out",
                  tmp_path / "out")
    assert result.exit_code == 0, result.output
    made = sorted(p.name for p in (tmp_path / "out").glob("*.png") if ".grid" not in p.name)
    assert made == ["000001.3.png", "000002.4.png"]
    assert all(_pixels(tmp_path / "out" / name).shape == (32, 32, 3) for name in made)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_resume_continues_exactly(kind, tiny_sd3_dir, tiny_flux_dir, tmp_path):
    """4 steps in one go equal 2 steps, a resume, and 2 more: the rows, bit for bit (Flux with T5 learning)."""
    model = tiny_sd3_dir if kind == "sd3" else tiny_flux_dir
    images = make_images(tmp_path / "imgs")
    extra = ["--set", "log.image_every=0", "--set", "personalization.train_t5=true", "--set", "log.save_every=2"]
    assert _train(images, model, tmp_path / "whole", *extra, steps=4).exit_code == 0
    half = _train(images, model, tmp_path / "half", *extra, steps=2)
    assert half.exit_code == 0, half.output
    (half_dir,) = (tmp_path / "half").iterdir()
    resumed = _run("train", "--resume", half_dir, "--max-steps", 4)
    assert resumed.exit_code == 0, resumed.output
    (whole_dir,) = (tmp_path / "whole").iterdir()
    a = load_embedding(whole_dir / "embeddings" / "imgs.safetensors").tokens[0]
    b = load_embedding(half_dir / "embeddings" / "imgs.safetensors").tokens[0]
    assert a.parts.keys() == b.parts.keys() == WIDTHS[kind].keys()
    assert all(torch.equal(a.parts[k], b.parts[k]) for k in a.parts)


# --- use: each part in its own encoder, exactly where the placeholder stands ----------------------------------


def _as_given(pipe, tokenizer, prompt: str) -> str:
    """The prompt as `tokenizer` sees it in generation: textinv expands multi-vector placeholders for SD3
    (`prompt_for`), diffusers' loader mixin for Flux."""
    from textinv.models.embeddings import prompt_for

    prompt = prompt_for(pipe, prompt)
    return pipe.maybe_convert_prompt(prompt, tokenizer) if hasattr(pipe, "maybe_convert_prompt") else prompt


def _input_embeddings(pipe, prompt: str) -> dict[str, torch.Tensor]:
    """What each text encoder's token-embedding table gives for `prompt` when the pipeline encodes it."""
    from textinv.models.conditioning import kind_of
    from textinv.models.embeddings import prompt_for
    from textinv.models.loading import text_encoders

    seen, hooks = {}, []
    for key, _, _, encoder in text_encoders(pipe):
        def hook(module, args, output, key=key):
            seen.setdefault(key, output.detach().clone())
        weight = encoder.get_input_embeddings().weight  # T5's encoder looks up in a twin of `shared`: hook them all
        tables = [m for m in encoder.modules() if isinstance(m, torch.nn.Embedding) and m.weight is weight]
        hooks += [table.register_forward_hook(hook) for table in tables]
    extra = {"prompt_3": None, "do_classifier_free_guidance": False} if kind_of(pipe) == "sd3" else {}
    try:
        pipe.encode_prompt(prompt_for(pipe, prompt), prompt_2=None, **extra)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_each_part_changes_its_encoder_exactly_where_the_placeholder_stands(kind, tiny_sd3_dir, tiny_flux_dir,
                                                                           tmp_path):
    pipe = load_pipeline(tiny_sd3_dir if kind == "sd3" else tiny_flux_dir, device="cpu")
    emb = _embedding(kind, "<x>", n=2)
    before = _input_embeddings(pipe, "a photo of cat cat the dog")
    add_embeddings(pipe, [(save_embedding(emb, tmp_path / "x.safetensors"), emb)])
    after = _input_embeddings(pipe, "a photo of <x> the dog")  # <x> is two vectors where "cat cat" were two tokens
    from textinv.models.loading import text_encoders

    for key, _, tokenizer, _ in text_encoders(pipe):
        ids = tokenizer(_as_given(pipe, tokenizer, "a photo of <x> the dog")).input_ids
        where = [i for i, t in enumerate(ids) if t in tokenizer.convert_tokens_to_ids(["<x>", "<x>_1"])]
        assert len(where) == 2, key  # <x> expanded to both its vectors (SD3's pipeline has no loader to do it)
        changed = (after[key][0] != before[key][0]).any(-1).nonzero().flatten().tolist()
        assert changed == where, key
        assert torch.equal(after[key][0, where], emb.tokens[0].parts[key]), key


def test_a_onetrainer_file_as_its_saver_writes_it_loads_and_generates(tiny_sd3_dir, tiny_flux_dir, tmp_path):
    """OneTrainer's savers write {clip_l, clip_g, t5} (SD3) and {clip_l, t5} (Flux) with save_file, no metadata, in
    the training dtype (StableDiffusion3EmbeddingSaver.py:28-33, FluxEmbeddingSaver.py:28-31, EmbeddingSaverMixin.py:40)."""
    for kind, model in (("sd3", tiny_sd3_dir), ("flux", tiny_flux_dir)):
        parts = {k: v.to(torch.bfloat16) for k, v in _embedding(kind, n=2, seed=3).tokens[0].parts.items()}
        path = tmp_path / f"ot-{kind}.safetensors"
        save_file(parts, str(path))
        emb = load_embedding(path)
        assert emb.source_format == "onetrainer" and emb.tokens[0].name == f"ot-{kind}"  # the stem, as elsewhere
        assert emb.tokens[0].source_dtype == "bfloat16"
        assert all(torch.equal(emb.tokens[0].parts[k], v.float()) for k, v in parts.items())
        result = _run("generate", f"a photo of ot-{kind}", "-e", path, "--model", model, "-s", 1, "-W", 32, "-H", 32,
                      "-o", tmp_path / kind)
        assert result.exit_code == 0, result.output
    sd = tmp_path / "ot-sd.safetensors"
    save_file({"emp_params": torch.randn(2, 768)}, str(sd))  # OneTrainer's SD1.x key, spelt as it spells it
    assert (load_embedding(sd).source_format, load_embedding(sd).family) == ("onetrainer", "SD1.x")


# --- files: inspect, convert --for, round trips, merge --------------------------------------------------------


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_every_layout_round_trips_bit_exactly(kind, tmp_path, real_embeddings):
    """Every layout that holds an SD3/Flux embedding, to every other, bit for bit; the T5 rows are real ones (the
    ComfyUI T5 fixture's first rows)."""
    from textinv.formats.files import WRITE_FORMATS

    with safe_open(str(real_embeddings / "t5xxl_T5-CharDetail_a1111_weighted.safetensors"), framework="pt") as f:
        real_t5 = f.get_tensor("t5xxl")[:2].float()
    g = torch.Generator().manual_seed(5)
    parts = {"clip_l": torch.randn(2, 768, generator=g), "clip_g": torch.randn(2, 1280, generator=g), "t5": real_t5}
    if kind == "flux":
        del parts["clip_g"]
    emb = Embedding([Token.from_parts("<x>", parts)], name="x")
    assert emb.family == {"sd3": "SD3", "flux": "Flux.1"}[kind]
    holding = ["a1111-pt", "diffusers-bin", "diffusers-safetensors", "kohya", "onetrainer", "comfyui-t5"]
    assert set(holding) < set(WRITE_FORMATS)
    for first in holding:
        a = load_embedding(save_embedding(emb, tmp_path / f"{first}-a", format=first))
        for second in holding:
            b = load_embedding(save_embedding(a, tmp_path / f"{first}-{second}", format=second))
            assert b.tokens[0].parts.keys() == parts.keys(), (first, second)
            assert all(torch.equal(b.tokens[0].parts[k], v) for k, v in parts.items()), (first, second)
    for one_encoder in ("paper-pt", "a1111-png", "sd-concepts-folder"):
        with pytest.raises(Exception, match="cannot hold"):
            save_embedding(emb, tmp_path / f"no-{one_encoder}", format=one_encoder)


def test_inspect_names_the_family_and_each_parts_width(tmp_path):
    sd3 = save_embedding(_embedding("sd3"), tmp_path / "a.safetensors", format="onetrainer")
    big = Embedding([Token("<b>", torch.randn(1, 768), t5=torch.randn(1, 4096))], name="b")
    flux = save_embedding(big, tmp_path / "b.safetensors", format="comfyui-t5")
    result = _run("inspect", "--json", sd3, flux)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["tokens"][0]["parts"] == {"clip_l": 32, "clip_g": 64, "t5": 48}
    assert (rows[1]["format"], rows[1]["family"]) == ("comfyui-t5", "Flux.1")
    assert rows[1]["tokens"][0]["parts"] == {"clip_l": 768, "t5": 4096}
    table = _run("inspect", flux)
    assert "family Flux.1" in table.stdout and "clip_l 768 + t5 4096" in table.stdout


def test_convert_for_each_tool_says_what_it_loads_and_refuses_what_it_would_misread(tmp_path):
    flux = save_embedding(Embedding([Token("<b>", torch.randn(1, 768), t5=torch.randn(1, 4096))], name="b"),
                          tmp_path / "b.safetensors")
    sd3 = save_embedding(Embedding([Token("<a>", torch.randn(1, 768), torch.randn(1, 1280),
                                          t5=torch.randn(1, 4096))], name="a"), tmp_path / "a.safetensors")
    comfy = _run("convert", flux, tmp_path / "for-comfy", "--for", "comfyui")
    assert comfy.exit_code == 0, comfy.output
    assert "ComfyUI: use embedding:for-comfy in the prompt" in comfy.stdout and "loads clip_l and t5xxl" in comfy.output
    assert _keys(tmp_path / "for-comfy.safetensors") == {"clip_l": (1, 768), "t5xxl": (1, 4096)}
    ot = _run("convert", sd3, tmp_path / "for-ot", "--for", "onetrainer")
    assert ot.exit_code == 0 and "loads clip_l, clip_g and t5" in ot.output
    assert set(_keys(tmp_path / "for-ot.safetensors")) == {"clip_l", "clip_g", "t5"}
    a1111 = _run("convert", sd3, tmp_path / "for-a1111", "--for", "a1111")
    assert a1111.exit_code == 0 and "its T5 takes no embedding" in a1111.output
    for src, tool, why in ((flux, "a1111", "AUTOMATIC1111 does not run Flux.1"),
                           (sd3, "diffusers", "no textual-inversion loader"),
                           (sd3, "invokeai", "takes any file with clip_g for SDXL"),
                           (flux, "kohya", "SD1.x, SD2.x and SDXL only")):
        refused = _run("convert", src, tmp_path / f"no-{tool}", "--for", tool)
        assert refused.exit_code == 1 and why in refused.stderr, (tool, refused.output)
        assert len(refused.stderr.strip().splitlines()) == 1
        assert not list(tmp_path.glob(f"no-{tool}*"))
    diffusers = _run("convert", flux, tmp_path / "for-diffusers", "--for", "diffusers")
    assert diffusers.exit_code == 0 and "text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2" in diffusers.output


def test_for_diffusers_on_flux_prints_the_two_calls_that_load_it_into_fluxpipeline(tmp_path, monkeypatch,
                                                                                  tiny_flux_dir):
    """FluxPipeline's own `load_textual_inversion`, run as `--for diffusers` prints it: clip_l into the CLIP, t5
    into T5 (a `*` placeholder written as `<stem>`, which neither tokenizer has)."""
    from diffusers import FluxPipeline

    from textinv.formats.files import write_files

    monkeypatch.chdir(tmp_path)
    emb = _embedding("flux", "*", n=2)
    (written,) = write_files(emb, tmp_path / "fx", for_tool="diffusers")
    assert written.triggers["diffusers"] == "<fx>" and written.format == "onetrainer"
    pipe = FluxPipeline.from_pretrained(tiny_flux_dir)
    exec(written.steps["diffusers"], {"pipe": pipe})  # noqa: S102 - textinv's printed step, run as a user would
    for encoder, key in (("", "clip_l"), ("_2", "t5")):
        tokenizer, text_encoder = getattr(pipe, f"tokenizer{encoder}"), getattr(pipe, f"text_encoder{encoder}")
        ids = tokenizer.convert_tokens_to_ids(["<fx>", "<fx>_1"])
        assert torch.equal(text_encoder.get_input_embeddings().weight[ids].detach(), emb.tokens[0].parts[key]), key


def test_merge_keeps_every_part_and_refuses_across_families(tmp_path):
    a = save_embedding(_embedding("sd3", "<a>", seed=1), tmp_path / "a.safetensors", format="onetrainer")
    b = save_embedding(_embedding("sd3", "<b>", seed=2), tmp_path / "b.safetensors", format="comfyui-t5")
    merged = _run("merge", a, b, "-o", tmp_path / "ab.safetensors", "--split")
    assert merged.exit_code == 0, merged.output
    for name, src in (("a", a), ("b", b)):
        out = load_embedding(tmp_path / f"ab-{name}.safetensors").tokens[0]
        want = load_embedding(src).tokens[0]
        assert out.parts.keys() == want.parts.keys() and all(torch.equal(out.parts[k], want.parts[k]) for k in out.parts)
    flux = save_embedding(_embedding("flux", "<c>"), tmp_path / "c.safetensors")
    across = _run("merge", a, flux, "-o", tmp_path / "ac.safetensors", "--split")
    assert across.exit_code == 1 and "different widths" in across.stderr


# --- the family check: one line before a model loads ---------------------------------------------------------


def test_an_embedding_of_another_family_is_one_line_before_the_model_loads(tiny_sd3_dir, tiny_flux_dir,
                                                                          tiny_sdxl_dir, tmp_path, monkeypatch):
    import textinv.models.loading as loading

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_pipeline", no_loading)
    monkeypatch.setattr("textinv.generation.session.load_pipeline", no_loading)
    sd3 = save_embedding(_embedding("sd3", "<a>"), tmp_path / "a.safetensors")
    flux = save_embedding(_embedding("flux", "<b>"), tmp_path / "b.safetensors")
    g = torch.Generator().manual_seed(0)
    clip_only = save_embedding(Embedding([Token("<c>", torch.randn(1, 32, generator=g), torch.randn(1, 64, generator=g))]),
                               tmp_path / "c.safetensors")
    cases = [(sd3, tiny_sdxl_dir, "32+64+48-dim", "32+64-dim"),  # an SD3 embedding on an SDXL model
             (flux, tiny_sd3_dir, "32+48-dim", "32+64+48-dim"),  # a Flux one on SD3
             (clip_only, tiny_sd3_dir, "32+64-dim", "32+64+48-dim"),  # CLIP-only on a T5 model
             (clip_only, tiny_flux_dir, "32+64-dim", "32+48-dim")]
    for path, model, emb_dims, model_dims in cases:
        result = _run("generate", "a photo of x", "-e", path, "--model", model, "-o", tmp_path / "out")
        assert result.exit_code == 1, result.output
        (line,) = result.stderr.strip().splitlines()
        assert f"is {emb_dims}" in line and f"but the model is {model_dims}" in line, line


def test_the_real_widths_name_sd3_and_flux_and_the_checks_between_them():
    from textinv.errors import ModelError
    from textinv.formats.families import check_fits, describe, family_for

    assert family_for(768, 1280, 4096) == "SD3" and family_for(768, 4096) == "Flux.1"
    assert describe(768, 1280, None) == "SD3 without its T5 encoder (768+1280-dim)"
    sd3, flux, xl = (768, 1280, 4096), (768, 4096), (768, 1280)
    check_fits("a", "<a>", sd3, (768, 1280, None))  # SD3 loaded without T5: the t5 part goes unused
    for widths, dims, said in ((sd3, xl, r"SD3 \(768\+1280\+4096-dim\) but the model is SDXL"),
                               (flux, sd3, r"Flux\.1 \(768\+4096-dim\) but the model is SD3"),
                               (xl, sd3, r"SDXL \(768\+1280-dim\) but the model is SD3"),
                               (xl, (768, 1280, None), "but the model is SD3 without its T5 encoder"),
                               ((768, None), flux, r"SD1\.x \(768-dim\) but the model is Flux\.1")):
        with pytest.raises(ModelError, match=said):
            check_fits("a.safetensors", "<a>", widths, dims)


def test_a_config_for_another_architecture_is_refused_before_the_model_loads(tiny_sd3_dir, tiny_flux_dir, tmp_path,
                                                                             monkeypatch):
    import textinv.training.setup as setup

    monkeypatch.setattr(setup, "load_pipeline", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    images = make_images(tmp_path / "imgs")
    for model, config, said in ((tiny_sd3_dir, "sdxl-finetune", "the config is for SDXL but the model is SD3"),
                                (tiny_flux_dir, "sd3-finetune", "the config is for SD3 but the model is Flux.1"),
                                (tiny_sd3_dir, "v1-finetune", "use --config sd3-finetune")):
        result = _train(images, model, tmp_path / "logs", "--config", config)
        assert result.exit_code == 1 and said in result.stderr, result.output


# --- what a model is, from its files ---------------------------------------------------------------------------


def test_peek_tells_sd3_and_flux_from_their_files(tiny_sd3_dir, tiny_flux_dir, tmp_path):
    from textinv.models import peek

    assert peek.model_kind(str(tiny_sd3_dir)) == "sd3" and peek.model_kind(str(tiny_flux_dir)) == "flux"
    assert not peek.is_sdxl_index(json.loads((tiny_sd3_dir / "model_index.json").read_text()))  # had text_encoder_2
    assert peek.default_config(str(tiny_sd3_dir)) == "sd3-finetune"
    assert peek.default_config(str(tiny_flux_dir)) == "flux-finetune"
    assert peek.text_encoder_dims(str(tiny_sd3_dir)) == (32, 64, 48)
    assert peek.text_encoder_dims(str(tiny_flux_dir)) == (32, 48)
    header = {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(1),
              "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(3, 768),
              "text_encoders.clip_g.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(3, 1280)}
    save_file(header, str(tmp_path / "sd3.5_medium.safetensors"))  # SD3.5's own file, without its T5
    assert peek.model_kind(str(tmp_path / "sd3.5_medium.safetensors")) == "sd3"
    assert peek.text_encoder_dims(str(tmp_path / "sd3.5_medium.safetensors")) == (768, 1280, None)
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(1)}, str(tmp_path / "flux1-dev.safetensors"))
    assert peek.model_kind(str(tmp_path / "flux1-dev.safetensors")) == "flux"
    assert peek.text_encoder_dims(str(tmp_path / "flux1-dev.safetensors")) is None  # its encoders are elsewhere


def test_an_sd3_folder_saved_without_t5_loads_and_takes_sd3_embeddings(tmp_path):
    from tests.conftest import TINY_WORDS
    from textinv.models.loading import encoder_widths, model_family
    from textinv.toy.pipeline import build_sd3_pipeline

    build_sd3_pipeline(TINY_WORDS, tmp_path / "no-t5", t5=False)
    pipe = load_pipeline(tmp_path / "no-t5", device="cpu")
    assert encoder_widths(pipe) == (32, 64, None) and model_family(pipe) == "unknown (dims 32+64+?)"
    emb = _embedding("sd3", "<x>")
    assert add_embeddings(pipe, [(save_embedding(emb, tmp_path / "x.safetensors"), emb)]) == ["<x>"]


# --- the pooled vector: at the end-of-text token, not at an added placeholder --------------------------------


def test_clip_configs_saying_eos_2_pool_at_the_end_of_text_in_training_and_generation(tmp_path):
    """Stable Diffusion's CLIP configs say eos_token_id 2, for which transformers pools at the highest id: an added
    placeholder's. Loaded by textinv, SDXL's `text_embeds` (training's conditioning and the pipeline's own
    encode_prompt) come from the end-of-text token, as ComfyUI and AUTOMATIC1111 take them."""
    from tests.conftest import TINY_WORDS
    from textinv.models import tokens
    from textinv.models.conditioning import conditioning_for
    from textinv.toy.pipeline import build_sdxl_pipeline

    built = build_sdxl_pipeline(TINY_WORDS, seed=0)
    for te in (built.text_encoder, built.text_encoder_2):
        te.config.eos_token_id = getattr(te, "text_model", te).eos_token_id = 2
    built.save_pretrained(tmp_path / "xl-eos2", safe_serialization=True)
    raw = type(built).from_pretrained(tmp_path / "xl-eos2")
    assert raw.text_encoder_2.text_model.eos_token_id == 2  # what transformers makes of such a config

    pipe = load_pipeline(tmp_path / "xl-eos2", device="cpu")
    prompt = "a photo of <x> the dog"
    emb = Embedding([Token("<x>", torch.randn(1, 32), torch.randn(1, 64))])
    add_embeddings(pipe, [(save_embedding(emb, tmp_path / "x.safetensors"), emb)])
    tokens.add_new_tokens(raw.tokenizer_2, ["<x>"], len(raw.tokenizer_2))
    raw.text_encoder_2.resize_token_embeddings(len(raw.tokenizer_2))
    ids = pipe.tokenizer_2(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    eos = int((ids[0] == pipe.tokenizer_2.eos_token_id).nonzero()[0])
    at = int((ids[0] == pipe.tokenizer_2.convert_tokens_to_ids("<x>")).nonzero()[0])
    te = pipe.text_encoder_2
    with torch.no_grad():
        hidden = te(ids, output_hidden_states=True).last_hidden_state[0]
        want, placeholder = te.text_projection(hidden[eos]), te.text_projection(hidden[at])
        old = raw.text_encoder_2(ids)[0][0]  # transformers' own pooling: at the placeholder
        assert torch.allclose(raw.text_encoder_2.text_projection(raw.text_encoder_2(ids).last_hidden_state[0, at]), old)
        cond = conditioning_for(pipe, 32)
        trained = cond(cond.tokenize([prompt]))["added_cond_kwargs"]["text_embeds"][0]
        used = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)[2][0]
    assert torch.allclose(trained, want, atol=1e-6) and torch.allclose(used, want, atol=1e-6)
    assert not torch.allclose(want, placeholder, atol=1e-3)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_sd3_and_flux_pooled_vectors_come_from_the_end_of_text_too(kind, tmp_path):
    from tests.conftest import TINY_WORDS
    from textinv.models.conditioning import conditioning_for
    from textinv.toy.pipeline import build_flux_pipeline, build_sd3_pipeline

    (build_sd3_pipeline if kind == "sd3" else build_flux_pipeline)(TINY_WORDS, tmp_path / kind, eos_token_id=2)
    pipe = load_pipeline(tmp_path / kind, device="cpu")
    emb = _embedding(kind, "<x>")
    add_embeddings(pipe, [(save_embedding(emb, tmp_path / "x.safetensors"), emb)])
    cond = conditioning_for(pipe, 32)
    ids = cond.tokenize(["a photo of <x> the dog"])
    te, tok = pipe.text_encoder, pipe.tokenizer
    clip_ids = ids[:, :77]
    eos = int((clip_ids[0] == tok.eos_token_id).nonzero()[0])
    with torch.no_grad():
        out = te(clip_ids)
        pooled = cond(ids)["pooled_projections"][0, :32]
        at_eos = te.text_projection(out.last_hidden_state[0, eos]) if kind == "sd3" else out.last_hidden_state[0, eos]
    assert torch.allclose(pooled, at_eos, atol=1e-6)


# --- the objective ---------------------------------------------------------------------------------------------


def test_ddpm_draws_the_timesteps_the_loop_always_drew():
    from diffusers import DDPMScheduler

    from textinv.training.objective import DDPM

    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(DDPM(DDPMScheduler(), "epsilon").timesteps(8, g1), torch.randint(0, 1000, (8,), generator=g2))


def test_flow_matching_sigmas_noise_target_and_weights(tiny_sd3_dir, tiny_flux_dir):
    """SD3: the scheduler's sigmas with its shift of 3; Flux.1: shifted by the image size as FluxPipeline shifts
    them at that size; x_t = (1 - s) x + s n, target n - x; weights as diffusers' compute_loss_weighting_for_sd3."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from textinv.training.objective import flow_matching

    sd3 = flow_matching(FlowMatchEulerDiscreteScheduler(shift=3.0).config, "logit_normal", 128)
    s = torch.arange(1000, 0, -1).float() / 1000
    assert torch.allclose(sd3.sigmas, 3 * s / (1 + 2 * s))
    flux_sched = FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_flux_dir / "scheduler")
    flux = flow_matching(flux_sched.config, "logit_normal", 128)  # 1024 px: 64 x 64 = 4096 patches
    mu = calculate_shift(4096, 256, 4096, 0.5, 1.15)
    assert torch.allclose(flux.sigmas, flux_sched.time_shift(mu, 1.0, s).float())
    g = torch.Generator().manual_seed(0)
    t = sd3.timesteps(4096, g)
    u = torch.sigmoid(torch.normal(0.0, 1.0, (4096,), generator=torch.Generator().manual_seed(0)))
    assert torch.equal(t, sd3.sigmas[(u * 1000).long()] * 1000)  # the logit-normal density, from the run's generator
    x, n = torch.randn(4, 16, 8, 8), torch.randn(4, 16, 8, 8)
    noisy, target = sd3.noised(x, n, t[:4])
    sigma = (t[:4] / 1000).view(-1, 1, 1, 1)
    assert torch.allclose(noisy, (1 - sigma) * x + sigma * n) and torch.equal(target, n - x)
    assert sd3.weights(t) is None
    cosmap = flow_matching(FlowMatchEulerDiscreteScheduler(shift=3.0).config, "cosmap", 128)
    sig = t[:4] / 1000
    assert torch.allclose(cosmap.weights(t[:4]), 2 / (torch.pi * (1 - 2 * sig + 2 * sig**2)))


def test_a_frozen_t5_runs_once_per_prompt_not_once_per_step(tiny_sd3_dir, tmp_path, monkeypatch):
    from transformers import T5EncoderModel

    from textinv.config import build_config
    from textinv.training import loop as trainmod

    calls = []
    real = T5EncoderModel.forward
    monkeypatch.setattr(T5EncoderModel, "forward", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    images = make_images(tmp_path / "imgs")
    cfg = build_config(None, ["data.resolution=32", "optim.gradient_accumulation_steps=1", "log.image_every=0",
                              "log.save_every=0", "log.val_loss_every=0", "train.gradient_checkpointing=false"],
                       **{"model.source": str(tiny_sd3_dir), "data.paths": [str(images)], "train.max_steps": 6,
                          "log.output_dir": str(tmp_path / "logs"), "personalization.initializer_words": ["cat"]})
    trainmod.train(cfg)
    from textinv.models.conditioning import CACHE_BATCH
    from textinv.training.data import load_templates

    prompts = len(load_templates("object"))  # 27, as the paper code's
    assert len(calls) == -(-prompts // CACHE_BATCH)  # the caching pass, in batches, before the first step; none after


def test_the_readme_table_of_t5_tools_is_in_step():
    from textinv.formats.registry import t5_tools_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for line in t5_tools_table().splitlines():
        assert line in readme, f"README's table of SD3/Flux tools is out of date; paste t5_tools_table(): {line}"


# --- the learning check ------------------------------------------------------------------------------------------


def _flow_error(pipe, folder: Path, prompt: str, draws: int = 8) -> float:
    """Mean squared error of the MMDiT's flow prediction for the pictures in `folder` under `prompt`, over fixed
    (noise, sigma) draws (uniform sigmas): the flow-matching loss, lower when the prompt explains the pictures
    better. The prompt goes through diffusers' own `encode_prompt`, not textinv's training code."""
    from textinv.models.embeddings import prompt_for
    from textinv.pictures import load_folder
    from textinv.training.objective import flow_matching

    found, _ = load_folder(folder, 32, center_crop=True)
    g = torch.Generator().manual_seed(1234)
    total = 0.0
    with torch.no_grad():
        latents = pipe.vae.encode(torch.stack([f.pixels for f in found])).latent_dist.mean
        latents = latents * pipe.vae.config.scaling_factor
        objective = flow_matching(pipe.scheduler.config, "none", latents.shape[-1])
        hidden, _, pooled, _ = pipe.encode_prompt(prompt_for(pipe, prompt), None, None, device="cpu",
                                                  do_classifier_free_guidance=False)
        n = len(latents)
        for _ in range(draws):
            noise = torch.randn(latents.shape, generator=g)
            t = objective.timesteps(n, g)
            noisy, target = objective.noised(latents, noise, t)
            pred = pipe.transformer(hidden_states=noisy, timestep=t, encoder_hidden_states=hidden.expand(n, -1, -1),
                                    pooled_projections=pooled.expand(n, -1)).sample
            total += float(torch.nn.functional.mse_loss(pred, target))
    return total / draws


@pytest.mark.slow
def test_sd3_learning_check_on_the_flow_toy(tmp_path):
    """On the SD3-shaped toy (toy VAE, an MMDiT fitted with flow matching to the toy world without the purple
    triangle), `*` learned from 4 purple triangles explains 4 other purple triangles better than the init word
    does, and its gain there is larger than on pictures of other pairs: it learned the concept, not a generally
    better word. (On a random-weight model the same training lowers the loss on any pictures alike.)"""
    from textinv.config import build_config
    from textinv.toy import world
    from textinv.toy.flow import build_sd3_toy
    from textinv.training import loop as trainmod

    build_sd3_toy(tmp_path / "sd3-toy", steps=300, batch=32)
    world.write_concept(tmp_path / "train", *world.HELD_OUT[0], n=4, seed=0)
    world.write_concept(tmp_path / "held", *world.HELD_OUT[0], n=4, seed=1)
    for colour, shape in (("red", "circle"), ("blue", "square"), ("green", "cross"), ("orange", "circle")):
        world.write_concept(tmp_path / "other", colour, shape, n=1, seed=2)
    cfg = build_config(None, ["data.resolution=32", "data.batch_size=8", "optim.gradient_accumulation_steps=1",
                              "optim.learning_rate=5e-3", "optim.scale_lr=false", "log.image_every=0",
                              "log.save_every=0", "log.val_loss_every=0", "train.gradient_checkpointing=false"], **{
        "model.source": str(tmp_path / "sd3-toy"), "data.paths": [str(tmp_path / "train")],
        "train.max_steps": 100, "log.output_dir": str(tmp_path / "logs"),
        "personalization.initializer_words": ["shape"]})
    result = trainmod.train(cfg)

    pipe = load_pipeline(tmp_path / "sd3-toy", device="cpu")
    add_embeddings(pipe, [(result.embedding_path, load_embedding(result.embedding_path))])
    gain = {}
    for folder in ("held", "other"):
        learned = _flow_error(pipe, tmp_path / folder, "a photo of a *")
        init = _flow_error(pipe, tmp_path / folder, "a photo of a shape")
        gain[folder] = (init - learned) / init
    assert gain["held"] > 0.005, gain  # closer to unseen pictures of the concept than the init word
    assert gain["held"] > gain["other"] + 0.005, gain  # and specifically to them


def test_inspect_against_the_model_checks_every_part_in_its_encoder(tiny_sd3_dir, tiny_flux_dir, tmp_path):
    for kind, model in (("sd3", tiny_sd3_dir), ("flux", tiny_flux_dir)):
        path = save_embedding(_embedding(kind, "<x>"), tmp_path / f"{kind}.safetensors")
        result = _run("inspect", "--json", path, "--model", model)
        assert result.exit_code == 0, result.output
        check = json.loads(result.stdout.splitlines()[-1])["model_check"]
        want = ["text_encoder", "text_encoder_2", "text_encoder_3"] if kind == "sd3" else ["text_encoder",
                                                                                           "text_encoder_2"]
        assert [t["encoder"] for t in check["tokens"]] == want
        assert all(n["token"] for t in check["tokens"] for v in t["vectors"] for n in v["nearest"])


# --- issue 21's levers on SD3 and Flux.1 -------------------------------------------------------------------------


def test_the_levers_bound_only_the_clip_columns_when_t5_is_frozen(tiny_sd3_dir, tmp_path):
    """max_drift acts per trained encoder against its own vocabulary; T5, frozen, has no columns in the rows."""
    images = make_images(tmp_path / "my_cat")
    result = _train(images, tiny_sd3_dir, tmp_path / "logs", "--set", "optim.max_drift=0.05",
                    "--set", "personalization.num_vectors_per_token=1", "--set", "optim.learning_rate=0.5",
                    "--set", "optim.scale_lr=false", steps=3)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "logs").iterdir()
    token = load_embedding(run_dir / "embeddings" / "my_cat.safetensors").tokens[0]
    pipe = load_pipeline(str(tiny_sd3_dir))
    for key, tokenizer, encoder in (("clip_l", pipe.tokenizer, pipe.text_encoder),
                                    ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2)):
        table = encoder.get_input_embeddings().weight.detach()
        bound = 0.05 * float(table.norm(dim=-1).median())
        cat = table[tokenizer("cat", add_special_tokens=False).input_ids[0]]
        drift = float((token.parts[key][0] - cat).norm())
        assert 0.9 * bound <= drift <= bound * 1.0001, (key, drift, bound)  # moved, and no further than the bound


def _refused_in_one_line(result, words: str) -> None:
    """One `error:` line holding `words`, a non-zero exit, no traceback (`no_loading` makes a load fail the test)."""
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], result.output
    assert "Traceback" not in result.output


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    from textinv.generation import session
    from textinv.training import setup

    monkeypatch.setattr(setup, "load_frozen", refuse)
    monkeypatch.setattr(session, "load_pipeline", refuse)


def test_min_snr_gamma_on_a_flow_model_is_one_line(tiny_flux_dir, tmp_path, no_loading):
    images = make_images(tmp_path / "my_cat")
    result = _train(images, tiny_flux_dir, tmp_path / "logs", "--set", "optim.min_snr_gamma=5")
    _refused_in_one_line(result, "`optim.min_snr_gamma` weights DDPM training")


def test_the_edit_anchor_on_a_flow_model_is_one_line(tiny_sd3_dir, tmp_path, no_loading):
    images = make_images(tmp_path / "my_cat")
    result = _train(images, tiny_sd3_dir, tmp_path / "logs", "--set", "optim.edit_anchor_weight=3", "--set",
                    "optim.edit_words=[red]")
    _refused_in_one_line(result, "`optim.edit_anchor_weight` is for DDPM training (SD1.x, SD2.x, SDXL; measured "
                                 "on the toy model only)")


def test_prompt_weights_on_sd3_are_refused_in_one_line(tiny_sd3_dir, tmp_path):
    result = _run("generate", "a photo of (cat:1.3)", "--model", tiny_sd3_dir, "-s", 2, "-W", 32, "-H", 32,
                  "-o", tmp_path)
    _refused_in_one_line(result, "prompt weights such as (word:0.7)")


# --- issue 26's memory settings on SD3 and Flux.1 ----------------------------------------------------------------


def test_an_offloaded_vae_trains_sd3_as_the_plain_run(tiny_sd3_dir, tmp_path):
    images = make_images(tmp_path / "my_cat")
    plain = _train(images, tiny_sd3_dir, tmp_path / "a", "--set", "log.image_every=3", steps=3)
    offloaded = _train(images, tiny_sd3_dir, tmp_path / "b", "--set", "log.image_every=3", "--set", "train.offload=true",
                       steps=3)
    assert plain.exit_code == 0 and offloaded.exit_code == 0, plain.output + offloaded.output
    (a,), (b,) = (tmp_path / "a").iterdir(), (tmp_path / "b").iterdir()
    assert (a / "loss.csv").read_text() == (b / "loss.csv").read_text()
    assert _keys(a / "embeddings" / "my_cat.safetensors") == _keys(b / "embeddings" / "my_cat.safetensors")
    assert sorted(p.name for p in (b / "images").iterdir()) == sorted(p.name for p in (a / "images").iterdir())


def test_a_memory_budget_on_flux_is_one_line_before_loading(tiny_flux_dir, tmp_path, no_loading):
    images = make_images(tmp_path / "my_cat")
    result = _train(images, tiny_flux_dir, tmp_path / "logs", "--max-memory", "4")
    _refused_in_one_line(result, "`train.max_memory` plans SD1.x, SD2.x and SDXL runs")
