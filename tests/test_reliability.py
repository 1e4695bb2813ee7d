"""Issue 25, reliability round 3: the last wrong results, every check the arguments allow made before any model
loads (in one line), the resume gaps, and the smaller faults. One test (or a few) per point of the issue; the
fuzzing of the readers is in test_fuzz.py."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import typing
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from textinv import config as cfgmod
from textinv.cli import app
from textinv.errors import ConfigError, EmbeddingFormatError
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import load_embedding, save_embedding
from textinv.runs import Run, resume_config

runner = CliRunner()
TOY_WIDTH = 64  # the shipped toy model's text encoder
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line(result) -> str:
    """The single error line of a failed command (no traceback, no other library's output)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return lines[0]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Every path that would load a pipeline fails the test: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    import textinv.generation.session as session
    import textinv.models.loading as loading
    import textinv.training.setup as setup

    for module in (loading, session, setup):
        monkeypatch.setattr(module, "load_pipeline", refuse)


@pytest.fixture
def pictures(tmp_path) -> Path:
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (60 * i, 0, 200)).save(folder / f"{i}.png")
    return folder


def _emb(tmp_path: Path, name: str, widths: tuple[int, ...], file: str = "e.pt") -> Path:
    second = torch.ones(1, widths[1]) if len(widths) > 1 else None
    return save_embedding(Embedding([Token(name, torch.ones(1, widths[0]), second)]), tmp_path / file)


# --- wrong results ----------------------------------------------------------------------------------------------


def test_convert_token_refuses_a_name_the_file_already_holds(tmp_path):
    src = save_embedding(Embedding([Token("*", torch.ones(1, 8)), Token("<b>", torch.zeros(1, 8))]), tmp_path / "t.pt")
    result = _run("convert", src, tmp_path / "out.pt", "--token", "*=<b>")
    assert result.exit_code == 1
    assert "already has a token '<b>'" in _one_line(result)
    assert not (tmp_path / "out.pt").exists()
    assert _run("convert", src, tmp_path / "ok.pt", "--token", "*=<c>").exit_code == 0
    assert [t.name for t in load_embedding(tmp_path / "ok.pt").tokens] == ["<c>", "<b>"]


@pytest.mark.parametrize("seed", [2**70, 2**32, -1])
def test_generate_seed_out_of_32_bits_is_refused_before_loading(seed, tmp_path, no_model_loads):
    result = _run("generate", "a photo", "--model", "toy", "--seed", seed, "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert _one_line(result) == f"error: --seed {seed}: must be between 0 and 4294967295 (a 32-bit seed, as train.seed)"


def test_the_largest_32_bit_seed_is_accepted():
    from textinv.generation.sampling import Request

    Request("x", seed=2**32 - 1).check()


@pytest.mark.parametrize("value", ["3", "[1, 2]", "['a photo of *', 4]"])
def test_prompts_must_be_text(value):
    with pytest.raises(ConfigError, match=r"`log.prompts` must be text"):
        cfgmod.apply_overrides(cfgmod.Config(), [f"log.prompts={value}"])
    with pytest.raises(ConfigError, match=r"`log.negative_prompt` must be text"):
        cfgmod.apply_overrides(cfgmod.Config(), ["log.negative_prompt=3"])
    ok = cfgmod.apply_overrides(cfgmod.Config(), ["log.prompts=['* on a beach', '3 cats']", "log.negative_prompt=blurry"])
    assert ok.log.prompts == ["* on a beach", "3 cats"] and ok.log.negative_prompt == "blurry"


def test_a_base_that_is_not_a_yaml_mapping_is_refused(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")  # what /etc/passwd reads as: one YAML string
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"base: {passwd}\ntrain:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match=r"`base: .*passwd` is not a textinv config \(it reads as str"):
        cfgmod.load_config(cfg)


@pytest.mark.parametrize("command", ["generate", "train"])
def test_model_config_is_refused_with_a_model_that_has_its_own(command, tmp_path, pictures, no_model_loads):
    missing = tmp_path / "no-such-folder"
    args = ["x"] if command == "generate" else [pictures, "-i", "cat", "--out", tmp_path / "logs"]
    result = _run(command, *args, "--model", "toy", "--model-config", missing)
    assert result.exit_code == 2
    line = _one_line(result)
    assert f"--model-config {missing}: only a single .ckpt/.safetensors model takes a config folder" in line
    assert "--model toy is a diffusers folder (the toy model)" in line


def test_a_missing_model_config_beside_a_single_file_is_said_before_loading(tmp_path, no_model_loads):
    ckpt = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(ckpt))
    result = _run("generate", "x", "--model", ckpt, "--model-config", tmp_path / "gone")
    assert result.exit_code == 1
    assert _one_line(result) == (f"error: --model-config {tmp_path / 'gone'}: no such folder; pass the folder of a "
                                 "diffusers model of the same family, e.g. a downloaded stable-diffusion-v1-5")


# --- every count, size and step has a bound that says why ----------------------------------------------------


def _numeric_keys() -> list[tuple[str, type]]:
    found = []
    for section in dataclasses.fields(cfgmod.Config):
        cls = typing.get_type_hints(cfgmod.Config)[section.name]
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if hint in (int, float):
                found.append((f"{section.name}.{f.name}", hint))
    return found


def test_the_schema_has_numeric_keys():
    keys = dict(_numeric_keys())
    assert len(keys) >= 20 and keys["log.val_samples"] is int and keys["optim.weight_decay"] is float


@pytest.mark.parametrize("key, kind", _numeric_keys())
def test_every_numeric_key_has_bounds_that_say_why(key, kind):
    huge = 10**15 if kind is int else 1e15
    with pytest.raises(ConfigError) as e:
        cfgmod.validate(cfgmod.apply_overrides(cfgmod.Config(), [f"{key}={huge}"]))
    message = str(e.value)
    assert f"`{key}`" in message and "\n" not in message
    why = message.split(";", 1)[1] if ";" in message else ""
    assert "(" in why or len(why.split()) > 6, f"the bound of {key} does not say why: {message}"
    with pytest.raises(ConfigError, match=rf"`{key}`"):
        cfgmod.validate(cfgmod.apply_overrides(cfgmod.Config(), [f"{key}=-1"]))


def test_val_samples_of_100000_is_refused_with_its_reason():
    with pytest.raises(ConfigError) as e:
        cfgmod.validate(cfgmod.apply_overrides(cfgmod.Config(), ["log.val_samples=100000"]))
    assert str(e.value) == ("`log.val_samples` is 100000; it must be at most 256 (every validation-loss check runs a "
                            "forward pass per sample; 8 show the trend)")


def test_the_packaged_configs_are_within_the_bounds():
    for name in ("v1-finetune", "v2-finetune", "sdxl-finetune", "toy"):
        cfgmod.validate(cfgmod.load_config(name))


# --- checks before the model loads: train, generate, eval, inspect --model -----------------------------------------


def test_train_a_file_as_the_folder_says_it_is_a_file(tmp_path, no_model_loads):
    picture = tmp_path / "cat.png"
    Image.new("RGB", (8, 8)).save(picture)
    result = _run("train", picture, "-i", "cat", "-m", "toy", "--out", tmp_path / "logs")
    assert result.exit_code == 2
    assert _one_line(result) == (f"error: {picture} is a file, not a folder; pass the folder that holds the images "
                                 "of the concept")


def test_train_an_empty_folder_or_a_read_only_out_is_said_before_loading(tmp_path, pictures, no_model_loads):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run("train", empty, "-i", "cat", "-m", "toy", "--config", "toy", "--out", tmp_path / "logs")
    assert result.exit_code == 1 and "(it is empty)" in _one_line(result)
    a_file = pictures / "0.png"
    result = _run("train", pictures, "-i", "cat", "-m", "toy", "--config", "toy", "--out", a_file / "logs")
    assert result.exit_code == 1 and f"{a_file} is a file, not a folder" in _one_line(result)
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    result = _run("train", pictures, "-i", "cat", "-m", "toy", "--config", "toy", "--out", ro / "logs")
    assert result.exit_code == 1 and "is not writable" in _one_line(result)


def test_train_an_sdxl_config_on_the_toy_model_is_said_before_loading(tmp_path, pictures, no_model_loads):
    result = _run("train", pictures, "-i", "cat", "-m", "toy", "--config", "sdxl-finetune",
                  "--out", tmp_path / "logs")
    assert result.exit_code == 1
    assert "the config is for SDXL but the model is textinv toy" in _one_line(result)


@pytest.mark.parametrize("family, widths", [("SD1.x", (768,)), ("SDXL", (768, 1280))])
def test_generate_a_foreign_family_is_refused_for_its_family_before_loading(family, widths, tmp_path,
                                                                            no_model_loads):
    emb = _emb(tmp_path, "<x>", widths)
    result = _run("generate", "a photo of <x>", "-m", "toy", "-e", emb, "--out", tmp_path / "o")
    assert result.exit_code == 1
    # an SDXL .pt holds only {clip_l, clip_g}: its placeholder is the file's stem
    assert f"embedding {'<x>' if family == 'SD1.x' else 'e'} is {family} (" in _one_line(result)
    assert "the model is textinv toy (64-dim)" in result.stderr


@pytest.mark.parametrize("command", ["generate", "train", "inspect"])
def test_a_terminal_hears_of_the_load_only_after_the_checks(command, tmp_path, pictures, monkeypatch,
                                                             no_model_loads):
    """Issue 23's `loading the model ...` line (on a terminal) comes after the checks: a foreign embedding or
    config ends in its one error line, with no word of a load that never happens."""
    import io

    from rich.console import Console

    import textinv.cli_output as output

    buf = io.StringIO()
    monkeypatch.setattr(output, "err", Console(file=buf, force_terminal=True, width=300))
    sd15 = _emb(tmp_path, "<x>", (768,))
    args = {"generate": ["generate", "a photo of <x>", "-m", "toy", "-e", sd15, "--out", tmp_path / "o"],
            "train": ["train", pictures, "-i", "cat", "-m", "toy", "--config", "sdxl-finetune",
                      "--out", tmp_path / "logs"],
            "inspect": ["inspect", sd15, "--model", "toy"]}[command]
    result = _run(*args)
    lines = _ANSI.sub("", buf.getvalue()).strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert ("is SD1.x (" if command != "train" else "the config is for SDXL") in lines[0]


@pytest.mark.parametrize("flag, value, message", [("--dtype", "fp7", "unknown dtype 'fp7'"),
                                                   ("--device", "tpu", "unknown device 'tpu'")])
def test_generate_an_unknown_dtype_or_device_is_said_before_loading(flag, value, message, tmp_path, no_model_loads):
    result = _run("generate", "x", "-m", "toy", flag, value, "--out", tmp_path / "o")
    assert result.exit_code == 1 and message in _one_line(result)


def test_train_a_device_this_machine_lacks_is_said_before_loading(tmp_path, pictures, no_model_loads):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = _run("train", pictures, "-i", "cat", "-m", "toy", "--device", "cuda", "--out", tmp_path / "logs")
    assert result.exit_code == 1 and "torch sees no CUDA GPU here" in _one_line(result)


def test_generate_the_same_placeholder_in_two_files_is_said_before_loading(tmp_path, no_model_loads):
    a = save_embedding(Embedding([Token("<x>", torch.ones(1, TOY_WIDTH))]), tmp_path / "a.pt")
    b = save_embedding(Embedding([Token("<x>", torch.zeros(1, TOY_WIDTH))]), tmp_path / "b.pt")
    result = _run("generate", "a photo of <x>", "-m", "toy", "-e", a, "-e", b, "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert "placeholder <x> is in both a.pt and b.pt" in _one_line(result)


@pytest.mark.parametrize("family, widths", [("SD1.x", (768,)), ("SDXL", (768, 1280))])
def test_eval_a_foreign_family_comes_first_and_before_loading(family, widths, tmp_path, no_model_loads):
    emb = _emb(tmp_path, "<x>", widths)  # no init word recorded: the family must still come first
    result = _run("eval", emb, "--model", "toy", "--data", tmp_path / "missing")
    assert result.exit_code == 1
    line = _one_line(result)
    assert f"is {family} (" in line and "textinv toy (64-dim)" in line and "--init-word" not in line


@pytest.mark.parametrize("case", ["missing", "empty", "a file", "cfg nan", "seed", "copy-best exists",
                                  "copy-best extension", "copy-best under a file"])
def test_eval_errors_the_arguments_show_come_before_loading(case, tmp_path, pictures, no_model_loads):
    emb = save_embedding(Embedding([Token("<x>", torch.ones(1, TOY_WIDTH))], init_words={"<x>": "cat"}),
                         tmp_path / "x.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {"missing": ["--data", tmp_path / "gone"], "empty": ["--data", empty],
            "a file": ["--data", emb], "cfg nan": ["--data", pictures, "--cfg", "nan"],
            "seed": ["--data", pictures, "--seed", 2**40],
            "copy-best exists": ["--data", pictures, "--copy-best", emb],
            "copy-best extension": ["--data", pictures, "--copy-best", tmp_path / "best.txt"],
            "copy-best under a file": ["--data", pictures, "--copy-best", emb / "best.pt"]}[case]
    result = _run("eval", emb, "--model", "toy", *args)
    assert result.exit_code in (1, 2)
    line = _one_line(result)
    expected = {"missing": "does not exist", "empty": "(it is empty)", "a file": "is a file, not a folder",
                "cfg nan": "--cfg nan: the guidance scale", "seed": "--seed 1099511627776: must be between",
                "copy-best exists": "already exists; pass --force", "copy-best extension": "cannot tell the format",
                "copy-best under a file": f"--copy-best {emb / 'best.pt'}: {emb} is a file, not a folder"}[case]
    assert expected in line


def test_eval_copy_best_into_a_read_only_folder_is_said_before_loading(tmp_path, pictures, no_model_loads):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    emb = _emb(tmp_path, "<x>", (TOY_WIDTH,))
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    result = _run("eval", emb, "--model", "toy", "--data", pictures, "--copy-best", ro / "best.pt")
    assert result.exit_code == 1 and f"{ro} is not writable" in _one_line(result)


def test_inspect_model_a_foreign_family_is_said_without_loading(tmp_path, no_model_loads):
    sd15 = _emb(tmp_path, "<x>", (768,), "sd15.pt")
    result = _run("inspect", sd15, "--model", "toy")
    assert result.exit_code == 1
    assert "embedding <x> is SD1.x (768-dim) but the model is textinv toy (64-dim)" in _one_line(result)
    result = _run("inspect", tmp_path / "nothing.pt", "--model", tmp_path / "no-model")
    assert result.exit_code == 1 and "no such file or folder" in _one_line(result)


def test_inspect_model_loads_once_for_the_files_that_fit(tmp_path):
    fits = save_embedding(Embedding([Token("<a>", torch.randn(1, TOY_WIDTH))]), tmp_path / "a.pt")
    sd15 = _emb(tmp_path, "<x>", (768,), "sd15.pt")
    result = _run("inspect", "--json", sd15, fits, "--model", "toy")
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert "SD1.x" in lines[0]["error"] and lines[1]["model_check"]["model"] == "toy"


# --- resume ------------------------------------------------------------------------------------------------------


@pytest.fixture
def saved_run(tmp_path, pictures) -> Run:
    cfg = cfgmod.build_config(None, ["train.max_steps=6", "personalization.num_vectors_per_token=2"],  # as its states
                              **{"data.paths": [str(pictures)], "model.source": "toy",
                                 "log.output_dir": str(tmp_path / "logs")})
    run = Run.create(cfg)
    for step in (2, 4):
        state = {"step": step, "learned": torch.full((2, TOY_WIDTH), float(step)), "optimizer": {},
                 "scheduler": {}, "rng": [torch.zeros(4, dtype=torch.uint8)], "sampler": [{}]}
        run.save_checkpoint(step, Embedding([Token("*", torch.ones(1, TOY_WIDTH))], step=step), state)
    return run


def test_resume_after_editing_num_vectors_is_one_line(saved_run, no_model_loads):
    assert "num_vectors_per_token: 2" in saved_run.config_text()  # the fixture's
    text = saved_run.config_text().replace("num_vectors_per_token: 2", "num_vectors_per_token: 3")
    (saved_run.path / "config.yaml").write_text(text)
    result = _run("train", "--resume", saved_run.path)
    assert result.exit_code == 1
    assert _one_line(result) == (
        f"error: {saved_run.path}: its states hold 2 learned vector(s), but config.yaml asks for 1 placeholder(s) "
        "x 3 vector(s) = 3; config.yaml was edited after the run started: put personalization back as it was, or "
        "start a new run")


def test_random_bytes_as_the_latest_state_fall_back_to_the_one_before(saved_run):
    latest = saved_run.path / "state" / "state-000004.pt"
    latest.write_bytes(os.urandom(3000))
    said: list[str] = []
    state = saved_run.latest_state(said.append)
    assert state["step"] == 2
    assert said == ["warning: state-000004.pt is truncated or not a state file; resuming from state-000002.pt (step 2)"]


@pytest.mark.parametrize("pointer", ["../../../etc/passwd", "/tmp/elsewhere/state-000009.pt", "state/notes.txt"])
def test_a_pointer_outside_the_run_falls_back_to_its_own_states(saved_run, pointer):
    (saved_run.path / "state.json").write_text(json.dumps({"step": 9, "state": pointer}))
    said: list[str] = []
    assert saved_run.latest_state(said.append)["step"] == 4
    assert said == [f"warning: state.json names {pointer!r}, not a state in state/; resuming from state-000004.pt "
                    "(step 4)"]


def test_fallback_warnings_read_as_sentences(saved_run):
    (saved_run.path / "state" / "state-000004.pt").write_bytes(b"")
    said: list[str] = []
    saved_run.latest_state(said.append)
    assert said == ["warning: state-000004.pt is empty; resuming from state-000002.pt (step 2)"]


def test_resume_config_checks_the_state_before_anything_loads(saved_run):
    for path in (saved_run.path / "state").iterdir():
        path.write_bytes(b"")
    with pytest.raises(ConfigError, match="no intact state in"):
        resume_config(saved_run.path)


def test_a_state_whose_vectors_do_not_fit_the_model_is_one_line():
    from textinv.training.state import Learning

    rows = torch.nn.Parameter(torch.zeros(1, 32))
    learning = Learning(rows=rows, optimizer=None, scheduler=None, scaler=None, batches=None, levers=None)
    with pytest.raises(ConfigError, match=r"shape \[1, 64\] but this model and config make \[1, 32\]"):
        learning.load({"learned": torch.zeros(1, 64)}, 0)


# --- smaller ones ------------------------------------------------------------------------------------------------


def test_a_pickle_asking_for_256_gib_says_so(tmp_path):
    import io
    import pickle
    import pickletools

    buf = io.BytesIO()
    torch.save({"<cat>": torch.ones(4)}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    f = io.BytesIO(data)
    for _ in range(3):  # the legacy layout: magic number, protocol, system info, then the object
        pickle.load(f)
    start = f.tell()
    at = next(start + pos for op, arg, pos in pickletools.genops(io.BytesIO(data[start:]))
              if op.name == "BININT1" and arg == 4)  # the storage's element count in its persistent id
    path = tmp_path / "huge.pt"
    path.write_bytes(data[:at] + b"\x8a\x05" + (2**36).to_bytes(5, "little") + data[at + 2:])  # 2^36 floats
    with pytest.raises(EmbeddingFormatError) as e:
        load_embedding(path)
    assert "asks for a storage of 256 GiB, more memory than a real embedding can need" in str(e.value)
    assert "truncated" not in str(e.value)


def test_inspect_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", "inspect", str(tmp_path / "gone.pt")])
    assert isinstance(result.exception, EmbeddingFormatError)
    result = runner.invoke(app, ["inspect", str(tmp_path / "gone.pt"), "--debug"])
    assert isinstance(result.exception, EmbeddingFormatError)


def test_quiet_and_debug_after_the_command(tmp_path):
    src = _emb(tmp_path, "<x>", (8,))
    result = _run("convert", src, tmp_path / "b.safetensors", "-q")
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and (tmp_path / "b.safetensors").is_file()
    loud = _run("convert", src, tmp_path / "c.safetensors")
    assert "wrote" in loud.stderr
    result = _run("convert", src, tmp_path / "d.pt", "--quiet", "--token", "<y>")
    assert result.exit_code == 0 and result.stderr == ""
    assert "-q" not in _run("convert", "--help").stdout


def test_sighup_ends_generate_as_ctrl_c_does(tmp_path, monkeypatch):
    from textinv.generation import sampling

    real_call, calls = sampling._call, []

    def hangup_after_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            assert signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL, "a hangup would skip all cleanup"
            os.kill(os.getpid(), signal.SIGHUP)
        return real_call(*args, **kwargs)

    monkeypatch.setattr(sampling, "_call", hangup_after_two)
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal (nohup would have it ignored)
    out = tmp_path / "out"
    try:
        result = _run("generate", "x", "-m", "toy", "-n", 4, "-b", 1, "-s", 1, "--seed", 1, "--out", out)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # put back
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines()[-1] == "interrupted"
    assert [p.name for p in sorted(out.iterdir())] == ["000001.1.png", "000002.2.png"]


def test_under_nohup_a_hangup_stays_ignored():
    from textinv.cli import sigterm_as_interrupt

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGHUP, previous)



# --- accelerate launch without --multi_gpu ------------------------------------------------------------------------


def test_a_launch_that_started_fewer_processes_than_asked_stops_in_one_line():
    from textinv.errors import UsageError
    from textinv.training.setup import check_launch

    simple = {"ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with pytest.raises(UsageError, match="asked for several processes but started only this one.*add --multi_gpu"):
        check_launch(simple)
    check_launch({**simple, "WORLD_SIZE": "2", "RANK": "0"})  # torchrun's processes (--multi_gpu)
    check_launch({"ACCELERATE_MIXED_PRECISION": "no"})  # one process asked, one started
    check_launch({})  # not under accelerate


def test_train_on_the_toy_model_defaults_to_the_toy_config(tmp_path, pictures):
    from textinv.models.peek import default_config

    assert default_config("toy") == "toy"
    cfg = cfgmod.build_config(None, None, **{"model.source": "toy", "data.paths": [str(pictures)]})
    assert cfg.data.resolution == 32 and cfg.train.max_steps == cfgmod.load_config("toy").train.max_steps


@pytest.mark.slow
def test_accelerate_launch_of_two_cpu_processes_without_multi_gpu_stops_at_once(tmp_path, pictures):
    """The case that "reached its last step and did not exit in 280 s": the launcher started one process (its
    simple launcher), which trained alone on the default 512 px config and then drew the last image log at 512 px
    on the 32 px toy model, minutes of silence. Now it stops before anything loads."""
    import subprocess
    import sys

    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [str(launcher), "launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "textinv", "train", str(pictures), "-i", "cat", "-m", "toy",
           "--out", str(tmp_path / "logs")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert "error: accelerate launch was asked for several processes but started only this one" in done.stderr
    assert not (tmp_path / "logs").exists()
