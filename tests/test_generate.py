"""`textinv generate`, `textinv img2img` and the dream> prompt, through the CLI, on a tiny real pipeline saved as a
diffusers folder and as an original-layout single-file checkpoint."""

from __future__ import annotations

import builtins
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from tests.ldm_checkpoint import config_only_copy, ldm_state_dict
from textinv.cli import app
from textinv.errors import UsageError
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import save_embedding
from textinv.generation import dream
from textinv.generation import session as session_module
from textinv.generation.metadata import a1111_parameters, read_parameters
from textinv.generation.sampling import GenerationParams, scheduler_name
from textinv.hashing import embedding_hash, sha256
from textinv.models.loading import load_pipeline
from textinv.progress import ImageProgress

runner = CliRunner()
DIM = 32


@pytest.fixture(scope="module")
def model_args(tiny_model_dir, tmp_path_factory):
    """`--model ...` for the tiny model as a diffusers folder and as a .ckpt with a local --model-config."""
    from diffusers import StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("ckpt")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    torch.save({"state_dict": ldm_state_dict(pipe), "global_step": 1}, folder / "model.ckpt")
    config = config_only_copy(tiny_model_dir, folder / "config")
    return {
        "folder": ["--model", str(tiny_model_dir)],
        "ckpt": ["--model", str(folder / "model.ckpt"), "--model-config", str(config)],
    }


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """The default --out (./outputs) and ./embeddings resolve inside the test's folder."""
    monkeypatch.chdir(tmp_path)


def _emb(name: str, n: int, seed: int, dim: int = DIM) -> Embedding:
    g = torch.Generator().manual_seed(seed)
    return Embedding([Token(name, torch.randn(n, dim, generator=g) * 0.5)], name=name.strip("<>"))


@pytest.fixture(scope="module")
def emb_files(tmp_path_factory) -> dict[str, Path]:
    """One embedding file per format textinv writes, each with its own placeholder; some multi-vector."""
    folder = tmp_path_factory.mktemp("embs")
    spec = {"pt": 2, "bin": 3, "safetensors": 1, "kohya": 2, "png": 1}
    ext = {"kohya": "safetensors"}
    return {
        fmt: save_embedding(_emb(f"<p-{fmt}>", n, seed=i), folder / f"p-{fmt}.{ext.get(fmt, fmt)}", format=fmt)
        for i, (fmt, n) in enumerate(spec.items())
    }


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.png") if not p.name.endswith(".grid.png"))


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


# --- generate ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "ckpt"])
def test_generate_writes_pngs_with_their_parameters(kind, model_args, emb_files, tmp_path):
    out = tmp_path / "out"
    result = _run(
        "generate", "a photo of <p-bin> in the style of <p-pt>", *model_args[kind],
        "--embedding", emb_files["bin"], "--embedding", emb_files["pt"],
        "-n", 3, "-s", 2, "--seed", 11, "-W", 32, "-H", 48, "--negative", "blurry", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    images = _pngs(out)
    assert [p.name for p in images] == ["000001.11.png", "000002.12.png", "000003.13.png"]
    assert result.stdout.split() == [str(p) for p in images]
    for seed, path in zip((11, 12, 13), images, strict=True):
        with Image.open(path) as im:
            assert im.size == (32, 48)
        params = read_parameters(path)
        assert params["Prompt"] == "a photo of <p-bin> in the style of <p-pt>"
        assert params["Negative prompt"] == "blurry"
        assert (params["Steps"], params["Sampler"], params["CFG scale"]) == ("2", "DDIM", "7.5")
        assert (params["Seed"], params["Size"]) == (str(seed), "32x48")
        assert params["Model"] == ("model" if kind == "ckpt" else model_args["folder"][1].split("/")[-1])
        # AUTOMATIC1111's short hash of the checkpoint file (issue 24: generate passed the name, so it was never written)
        assert params.get("Model hash") == (sha256(model_args["ckpt"][1])[:10] if kind == "ckpt" else None)
        hashes = {name: embedding_hash(emb_files[fmt]) for name, fmt in (("<p-bin>", "bin"), ("<p-pt>", "pt"))}
        assert params["TI hashes"] == ", ".join(f"{n}: {h}" for n, h in hashes.items())
        with Image.open(path) as im:
            dream_line = f'"a photo of <p-bin> in the style of <p-pt> [blurry]" -s 2 -S {seed} -W 32 -H 48 -C 7.5 -A ddim'
            assert im.info["Dream"] == dream_line
            meta = json.loads(im.info["sd-metadata"])
        assert meta["image"]["seed"] == seed and meta["image"]["type"] == "txt2img"
        assert meta.get("model_hash") == (sha256(model_args["ckpt"][1]) if kind == "ckpt" else None)
    grid = out / "000001.11.grid.png"
    with Image.open(grid) as im:
        assert im.size == (64, 96)  # 3 images: 2 columns, 2 rows
    assert np.array_equal(_pixels(grid)[:48, 32:64], _pixels(images[1]))


def test_the_checkpoint_is_hashed_once_and_left_out_chunks_are_named(model_args, tmp_path):
    """Model hash through generate: a 7 GB checkpoint must not be hashed per image or per request, and a prompt
    InvokeAI's readers would misread keeps only AUTOMATIC1111's chunk, with one note saying why."""
    from textinv.hashing import _sha256

    _sha256.cache_clear()
    for n in (1, 2):
        result = _run("generate", 'a "purple" cat', *model_args["ckpt"], "--negative", "blurry, [bad|worse], (ugly:1.3)",
                      "-n", n, "-s", 1, "-W", 32, "-H", 32, "--out", tmp_path / f"out{n}")
        assert result.exit_code == 0, result.output
    assert _sha256.cache_info().misses == 1
    assert "note: the PNGs leave out Dream: " in result.stderr and "sd-metadata: " in result.stderr
    with Image.open(_pngs(tmp_path / "out2")[0]) as im:
        assert set(im.info) & {"parameters", "Dream", "sd-metadata"} == {"parameters"}
    params = read_parameters(_pngs(tmp_path / "out2")[1])
    assert (params["Prompt"], params["Negative prompt"]) == ('a "purple" cat', "blurry, [bad|worse], (ugly:1.3)")
    assert params["Model hash"] == sha256(model_args["ckpt"][1])[:10] and params["Model"] == "model"


@pytest.mark.parametrize("kind", ["folder", "ckpt"])
def test_same_seed_gives_the_same_pixels(kind, model_args, emb_files, tmp_path):
    common = [*model_args[kind], "--embedding", emb_files["bin"], "-s", 2]
    first = _run("--quiet", "generate", "<p-bin>", *common, "-n", 2, "--seed", 4, "--out", tmp_path / "a")
    again = _run("--quiet", "generate", "<p-bin>", *common, "-n", 1, "--seed", 5, "--out", tmp_path / "b")
    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    (a4, a5), (b5,) = _pngs(tmp_path / "a"), _pngs(tmp_path / "b")
    # any image of a batch can be made again alone, to float tolerance: batched and single matrix products may
    # round differently, which can move a pixel by one 8-bit level
    assert np.abs(_pixels(a5).astype(int) - _pixels(b5)).max() <= 1
    assert np.abs(_pixels(a4).astype(int) - _pixels(a5)).max() > 10


def test_every_format_and_several_embeddings_in_one_prompt(model_args, emb_files, tmp_path):
    prompt = " ".join(f"<p-{fmt}>" for fmt in emb_files)
    args = [a for f in emb_files.values() for a in ("-e", f)]
    result = _run(
        "generate", prompt, *model_args["folder"], *args, "-s", 2, "--seed", 1, "--scheduler", "k_euler_a",
        "--json", "--out", tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not a loaded placeholder" not in result.stderr
    assert "placeholders: <p-pt> <p-bin> <p-safetensors> <p-kohya> <p-png>" in result.stderr
    (line,) = result.stdout.splitlines()
    assert json.loads(line) == {"path": str(tmp_path / "000001.1.png"), "seed": 1, "prompt": prompt}
    params = read_parameters(tmp_path / "000001.1.png")
    assert params["Sampler"] == "Euler a"
    assert params["TI hashes"] == ", ".join(f"<p-{fmt}>: {embedding_hash(f)}" for fmt, f in emb_files.items())


def test_token_renames_a_placeholder_and_unknown_ones_warn(model_args, emb_files, tmp_path):
    result = _run(
        "generate", "a <mine> next to <nope>", *model_args["folder"], "-e", emb_files["bin"], "--token", "<mine>",
        "-s", 1, "--out", tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "placeholders: <mine>" in result.stderr
    assert "<nope> is not a loaded placeholder, so it is used as plain text (loaded: <mine>)" in result.stderr
    assert "<mine> is not" not in result.stderr


# --- img2img -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "ckpt"])
def test_img2img_starts_from_the_init_image(kind, model_args, emb_files, tmp_path):
    init = tmp_path / "sketch.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(init)
    result = _run(
        "img2img", "waterfall and rainbow in the style of <p-kohya>", "--init_img", init, "--strength", 0.5,
        *model_args[kind], "-e", emb_files["kohya"], "-s", 4, "-n", 2, "--seed", 9, "--json", "--out", tmp_path / "o",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["seed"] for r in rows] == [9, 10]
    for row in rows:
        with Image.open(row["path"]) as im:
            assert im.size == (40, 24)
            assert im.info["Dream"].endswith(f'-A ddim -I "{init}" -f 0.5')
        params = read_parameters(row["path"])
        assert params["Denoising strength"] == "0.5" and params["Size"] == "40x24"
    assert (tmp_path / "o" / "000001.9.grid.png").is_file()


# --- wrong inputs --------------------------------------------------------------------------------------------

WRONG = {
    "uncached hub model": (["generate", "x", "--model", "nobody/nothing"], "is not in the Hugging Face cache"),
    "missing checkpoint": (["generate", "x", "--model", "models/ldm/model.ckpt"], "no such file or folder"),
    "missing embedding": (["generate", "x", "-e", "nothing.pt"], "no such file or folder, and no concept"),
    "wrong-width embedding": (["generate", "x", "-e", "{sd15}"], "is SD1.x (768-dim) but the model is 32-dim"),
    "unreadable init image": (["img2img", "x", "--init-img", "{text}"], "not a readable image"),
    "missing init image": (["img2img", "x", "--init-img", "nope.png"], "--init-img nope.png: no such file"),
    "strength above 1": (["img2img", "x", "--init-img", "{png}", "--strength", "1.5"], "must be between 0 and 1"),
    "negative strength": (["img2img", "x", "--init-img", "{png}", "-f", "-0.1"], "must be between 0 and 1"),
    "zero steps": (["generate", "x", "-s", "0"], "--steps 0: the number of denoising steps must be 1 or more"),
    "negative steps": (["generate", "x", "--steps", "-3"], "--steps -3: the number of denoising steps"),
    "zero count": (["generate", "x", "-n", "0"], "-n 0: the number of images must be 1 or more"),
    "negative count": (["generate", "x", "-n", "-2"], "-n -2: the number of images must be 1 or more"),
    "odd width": (["generate", "x", "-W", "30"], "--width 30: must be a positive multiple of 8"),
    "unknown scheduler": (["generate", "x", "--scheduler", "magic"], "unknown scheduler 'magic'"),
    "no prompt and no terminal": (["generate"], "no PROMPT given and stdin is not a terminal"),
}


@pytest.mark.parametrize("case", WRONG, ids=list(WRONG))
def test_wrong_input_is_one_clear_line(case, model_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_embedding(_emb("<big>", 1, seed=0, dim=768), tmp_path / "sd15.pt")
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    files = {"{sd15}": "sd15.pt", "{text}": "notes.png", "{png}": "ok.png"}
    args, expected = WRONG[case]
    args = [files.get(a, a) for a in args]
    if "--model" not in args:
        args += model_args["folder"]
    result = runner.invoke(app, ["--quiet", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_2_and_missing_things_exit_1(model_args):
    assert _run("generate", "x", "-s", "0", *model_args["folder"]).exit_code == 2
    assert _run("generate", *model_args["folder"]).exit_code == 2
    assert _run("generate", "x", "--model", "nobody/nothing").exit_code == 1


def test_real_sd15_embedding_on_the_tiny_model_names_both_families(real_embeddings, model_args):
    result = _run("--quiet", "generate", "x", *model_args["folder"], "-e",
                  real_embeddings / "diffusers_singleinsert_learned_embeds.bin")  # fmt: skip
    assert result.exit_code == 1
    assert "is SD1.x (768-dim) but the model is 32-dim (no known family)" in result.stderr


# --- the dream> prompt ---------------------------------------------------------------------------------------


def test_dream_prompt_keeps_the_model_loaded(model_args, emb_files, tmp_path, monkeypatch):
    init = tmp_path / "init.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(init)
    lines = iter([
        '"a photo of <p-bin>" -s2 -n2 --seed=3',
        f"a sketch of <p-bin> --steps=2 --init_img={init} --strength=0.5 -S 7",
        "a photo -s 0",
        "a photo --model someone/else",
        '"unbalanced',
        "q",
        "never read",
    ])  # fmt: skip
    loads = []
    real_load = load_pipeline

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(session_module, "load_pipeline", counting_load)
    monkeypatch.setattr(dream, "stdin_is_terminal", lambda: True)
    monkeypatch.setattr(builtins, "input", lambda prompt: next(lines))
    monkeypatch.setenv("HOME", str(tmp_path))
    out = tmp_path / "out"
    result = _run("--quiet", "generate", *model_args["folder"], "-e", emb_files["bin"], "--out", out)
    assert result.exit_code == 0, result.output
    assert len(loads) == 1
    assert [p.name for p in _pngs(out)] == ["000001.3.png", "000002.4.png", "000003.7.png"]
    assert (out / "000001.3.grid.png").is_file()
    assert read_parameters(out / "000003.7.png")["Denoising strength"] == "0.5"
    assert read_parameters(out / "000003.7.png")["Steps"] == "2"
    assert read_parameters(out / "000001.3.png")["TI hashes"] == f"<p-bin>: {embedding_hash(emb_files['bin'])}"
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors)
    assert "--steps 0" in errors[0] and "--model cannot change inside dream>" in errors[1]
    assert "cannot read that line" in errors[2]
    assert next(lines) == "never read"  # q ended the session


def test_dream_line_spellings():
    assert dream.split_line('"a photo of *" -s100 -n4 --init_img=./x.png --strength=0.5') == [
        "a photo of *", "-s100", "-n4", "--init-img=./x.png", "--strength=0.5",
    ]  # fmt: skip
    assert dream.split_line("a cat on a mat --cfg_scale 7 -S 3") == ["a cat on a mat", "--cfg-scale", "7", "-S", "3"]
    with pytest.raises(ValueError):
        dream.split_line('"a photo')
    assert dream.run(lambda args: None, read=lambda prompt: (_ for _ in ()).throw(EOFError)) == 0


def _generate_command():
    return typer.main.get_command(app).commands["generate"]


def _start_options(*args: str) -> dict:
    """The options `textinv generate ARGS` hands to its helper: its parser's, by parameter name."""
    return _generate_command().make_context("generate", list(args)).params


def test_a_dream_line_wins_over_the_start_up_flags_and_keeps_the_rest():
    start = _start_options("-m", "toy", "-s", "10", "-n", "3", "-S", "5", "-e", "a.pt", "--token", "<a>", "--json",
                           "-o", "pics")
    line = dream.line_options(_generate_command(), dream.split_line('"a photo of *" -s 2 --init_img=x.png -C 3'), start)
    assert (line["prompt"], line["steps"], line["init_img"], line["cfg"]) == ("a photo of *", 2, Path("x.png"), 3.0)
    assert (line["n"], line["seed"], line["as_json"], line["out_dir"], line["model"]) == (3, 5, True, Path("pics"), "toy")
    assert (line["embedding"], line["token"]) == (None, None)  # the start-up embeddings are loaded already
    request = dream.request_of(line)
    assert (request.prompt, request.steps, request.n, request.seed, request.cfg) == ("a photo of *", 2, 3, 5, 3.0)
    assert request.init_image == Path("x.png")
    more = dream.line_options(_generate_command(), ["a cat", "-e", "b.pt", "--token", "<b>", "--model", "toy"], start)
    assert (more["embedding"], more["token"], more["steps"]) == (["b.pt"], ["<b>"], 10)  # the same --model is fine


@pytest.mark.parametrize(("args", "message"), [
    (["a cat", "--model", "other"], "--model cannot change inside dream>; quit (q) and restart"),
    (["a cat", "--model-config", "cfg"], "--model-config cannot change inside dream>; quit (q) and restart"),
    (["a cat", "--device", "cpu"], "--device cannot change inside dream>; quit (q) and restart"),
    (["a cat", "--dtype=fp32"], "--dtype cannot change inside dream>; quit (q) and restart"),
    (["-s", "2"], 'give a prompt first, e.g. "a photo of *" -s 50 -n 4'),
    (["a cat", "--bogus"], "No such option: --bogus"),
    (["a cat", "-s", "many"], "Invalid value for '--steps' / '-s'"),
])  # fmt: skip
def test_a_dream_line_is_refused_with_one_line(args, message):
    with pytest.raises(UsageError) as refused:
        dream.line_options(_generate_command(), args, _start_options("-m", "toy"))
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_dream_help_prints_the_flags_and_asks_for_nothing(capsys):
    assert dream.line_options(_generate_command(), ["--help"], _start_options()) is None
    assert "--steps" in capsys.readouterr().out


# --- pieces --------------------------------------------------------------------------------------------------


def test_a1111_parameters_layout():
    p = GenerationParams(
        prompt="a photo of <cat-toy>", negative="blurry", steps=50, cfg=7.5, seed=42, width=512, height=768,
        sampler="Euler a", model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        embeddings=[("cat-toy", "0123456789ab"), ("style", "ba9876543210")],
    )  # fmt: skip
    assert a1111_parameters(p) == (
        "a photo of <cat-toy>\n"
        "Negative prompt: blurry\n"
        "Steps: 50, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x768, "
        "Model: stable-diffusion-v1-5/stable-diffusion-v1-5, "
        'TI hashes: "cat-toy: 0123456789ab, style: ba9876543210", Version: textinv 0.1.0'
    )


def test_dream_chunk_reads_back_with_shlex():
    import shlex

    from textinv.generation.metadata import dream_command

    p = GenerationParams(prompt='a "quoted" photo of *', negative="", steps=5, cfg=7.5, seed=1, width=64, height=64,
                         sampler="PLMS", model="m", init_image="my sketch.png", strength=0.25)  # fmt: skip
    assert shlex.split(dream_command(p)) == [
        'a "quoted" photo of *', "-s", "5", "-S", "1", "-W", "64", "-H", "64", "-C", "7.5", "-A", "plms",
        "-I", "my sketch.png", "-f", "0.25",
    ]  # fmt: skip


def test_scheduler_spellings():
    assert scheduler_name("k_euler_a") == scheduler_name("Euler a") == scheduler_name("euler-a") == "euler_a"
    assert scheduler_name("DPM++ 2M Karras") == "dpmpp_2m_karras" and scheduler_name("pndm") == "plms"


def test_plain_progress_lines_when_not_a_terminal():
    buf = io.StringIO()
    progress = ImageProgress(Console(file=buf, width=200), live=False)
    progress.start("images", 3)
    for batch in ([1], [2, 3]):  # a batch of one image, then a batch of two
        progress.start("steps", 3)
        for step in range(1, 4):
            progress.advance("steps", step)
        progress.finish("steps")
        progress.advance("images", batch[-1])
    progress.finish("images")
    progress.message("warning: <x> is not a loaded placeholder")
    lines = buf.getvalue().splitlines()
    assert [line.split(" in ")[0] for line in lines[:2]] == ["image 1/3: 3 steps", "images 2-3/3: 3 steps"]
    assert lines[2] == "warning: <x> is not a loaded placeholder"
    quiet = io.StringIO()
    silent = ImageProgress(Console(file=quiet), enabled=False, live=False)
    silent.start("images", 1)
    silent.advance("images", 1)
    silent.message("loading model toy")
    silent.message("warning: shown even when quiet")
    assert quiet.getvalue() == "warning: shown even when quiet\n"
    with ImageProgress(Console(file=io.StringIO(), force_terminal=True), live=True) as bars:
        bars.start("images", 1)
        bars.start("steps", 2)
        bars.advance("steps", 2)
        bars.advance("images", 1)
        bars.finish("images")
        assert bars._bar is None


# --- batches, saving as made, faults -------------------------------------------------------------------------


def test_a_batch_makes_what_single_images_make(tiny_model_dir, emb_files):
    from textinv.generation.sampling import txt2img
    from textinv.generation.session import Session

    session = Session.open(str(tiny_model_dir), embeddings=[emb_files["bin"]])
    common = dict(steps=3, scheduler="euler_a")  # an ancestral sampler: fresh noise at every step, per image
    batch = txt2img(session.pipe, "a photo of <p-bin>", n=4, seed=20, batch_size=4, **common)
    assert [g.seed for g in batch] == [20, 21, 22, 23]
    for g in batch:
        (alone,) = txt2img(session.pipe, "a photo of <p-bin>", n=1, seed=g.seed, **common)
        diff = np.abs(np.asarray(g.image).astype(int) - np.asarray(alone.image)).max()
        assert diff <= 1, f"seed {g.seed}: batched and alone differ by {diff} levels"
    assert np.abs(np.asarray(batch[0].image).astype(int) - np.asarray(batch[1].image)).max() > 10


def test_the_session_from_python(tiny_model_dir, emb_files, tmp_path):
    from textinv.generation.sampling import Request
    from textinv.generation.session import Session

    session = Session.open(str(tiny_model_dir), embeddings=[emb_files["pt"]])
    made = session.make(Request("a photo of <p-pt>", n=3, steps=2, seed=7, batch_size=2), tmp_path / "out")
    assert [p.name for p in made.paths] == ["000001.7.png", "000002.8.png", "000003.9.png"]
    assert made.grid == tmp_path / "out" / "000001.7.grid.png" and made.grid.is_file()
    assert [read_parameters(p)["Seed"] for p in made.paths] == ["7", "8", "9"]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_run_keeps_the_images_it_finished(how, model_args, tmp_path, monkeypatch):
    import os
    import signal

    from textinv.generation import sampling as generate

    real_call, calls = generate._call, []

    def interrupted_after_five(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # during the sixth image
            if how == "sigterm":
                assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, "a kill would skip all cleanup"
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt
        return real_call(*args, **kwargs)

    monkeypatch.setattr(generate, "_call", interrupted_after_five)
    out = tmp_path / "out"
    result = _run("--quiet", "generate", "x", *model_args["folder"], "-n", 8, "-b", 1, "-s", 1, "--seed", 1, "--out", out)
    assert result.exit_code == 130
    assert [p.name for p in sorted(out.iterdir())] == [f"00000{i}.{i}.png" for i in range(1, 6)]  # no grid, no temp
    assert read_parameters(out / "000005.5.png")["Seed"] == "5"


def test_a_full_disk_leaves_no_partial_png_and_one_line(model_args, tmp_path, monkeypatch):
    import errno

    real_save = Image.Image.save

    def disk_full(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)  # the bytes go out, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    out = tmp_path / "out"
    result = _run("--quiet", "generate", "x", *model_args["folder"], "-n", 2, "-s", 1, "--seed", 3, "--out", out)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: --out {out}: cannot write 000001.3.png (No space left on device)"
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("case", ["read-only", "file in the path"])
def test_an_unwritable_out_is_one_line_before_the_model_loads(case, model_args, tmp_path, monkeypatch):
    import os

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(session_module, "load_pipeline", never)
    if case == "read-only":
        (tmp_path / "ro").mkdir()
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real_access(p, mode))
        out, expected = tmp_path / "ro" / "sub", f"{tmp_path / 'ro'} is not writable; pass a folder you can write to"
    else:
        (tmp_path / "notes.txt").write_text("")
        out, expected = tmp_path / "notes.txt" / "sub", f"{tmp_path / 'notes.txt'} is a file, not a folder; pass a folder"
    result = _run("--quiet", "generate", "x", *model_args["folder"], "--out", out)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: --out {out}: {expected}"


@pytest.mark.parametrize("kind", ["folder", "safetensors", "config"])
def test_an_embedding_that_does_not_fit_fails_before_the_model_loads(kind, tiny_model_dir, model_args, tmp_path,
                                                                      monkeypatch):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    if kind == "safetensors":
        pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
        save_file({k: v.contiguous() for k, v in ldm_state_dict(pipe).items()}, tmp_path / "model.safetensors")
        model = ["--model", tmp_path / "model.safetensors"]
    else:
        model = model_args["folder" if kind == "folder" else "ckpt"]

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(session_module, "load_pipeline", never)
    save_embedding(_emb("<big>", 1, seed=0, dim=768), tmp_path / "sd15.pt")
    result = _run("--quiet", "generate", "x", *model, "-e", tmp_path / "sd15.pt")
    assert result.exit_code == 1
    assert "sd15.pt: embedding <big> is SD1.x (768-dim) but the model is 32-dim" in result.stderr


def test_scheduler_that_needs_scipy_says_so(model_args, tmp_path):
    pytest.importorskip("diffusers")
    try:
        import scipy  # noqa: F401

        pytest.skip("scipy is installed, so lms works")
    except ImportError:
        pass
    result = _run("--quiet", "generate", "x", *model_args["folder"], "-A", "lms", "-s", 1)
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: --scheduler lms needs scipy (pip install scipy); pick another one"


def test_a_hub_cached_model_is_checked_from_its_cached_config(tmp_path, monkeypatch):
    import os

    snapshot = Path(os.environ["HF_HOME"]) / "hub" / "models--someone--sd2" / "snapshots" / "abc123"
    (snapshot / "text_encoder").mkdir(parents=True)
    (snapshot / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": 1024}))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    save_embedding(_emb("<cat>", 1, seed=0, dim=768), tmp_path / "cat.pt")
    result = _run("--quiet", "generate", "x", "--model", "someone/sd2", "-e", tmp_path / "cat.pt")
    assert result.exit_code == 1
    assert "cat.pt: embedding <cat> is SD1.x (768-dim) but the model is SD2.x (1024-dim)" in result.stderr


@pytest.mark.parametrize(("scheduler", "evaluations"), [("ddim", 2), ("heun", 3)])
def test_generation_reports_images_and_steps(scheduler, evaluations, tiny_model_dir):
    from textinv.generation.sampling import txt2img
    from textinv.reporting import Reporter

    class Log(Reporter):
        def __init__(self):
            self.events = []

        def start(self, task, total, *, done=0, note=""):
            self.events.append(("start", task, total))

        def advance(self, task, done, **values):
            self.events.append(("advance", task, done))

        def finish(self, task):
            self.events.append(("finish", task))

    log = Log()
    pipe = load_pipeline(str(tiny_model_dir))
    txt2img(pipe, "a photo", n=3, steps=2, seed=0, batch_size=2, scheduler=scheduler, reporter=log)
    images = [e for e in log.events if e[1] == "images"]
    assert images == [("start", "images", 3), ("advance", "images", 2), ("advance", "images", 3), ("finish", "images")]
    steps = [e for e in log.events if e[1] == "steps"]
    last_starts = [e for i, e in enumerate(steps) if e[0] == "start" and (i + 1 == len(steps) or steps[i + 1][0] != "start")]
    assert [e[2] for e in last_starts] == [evaluations, evaluations]  # the count the bar runs to, per batch
    assert [e[2] for e in steps if e[0] == "advance"] == list(range(1, evaluations + 1)) * 2
