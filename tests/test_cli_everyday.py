"""The everyday command line (issue 23): flags that mean one thing everywhere, help that fits 80 columns, quiet
output with the libraries present, one JSON object from `train --json`, one process printing under accelerate,
and file commands that start without the model libraries."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from textinv.cli import app
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import save_embedding

from .test_concepts import concepts, hub  # noqa: F401  (fixtures: a fake hub with sd-concepts-library repos)
from .test_train import make_images

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _commands() -> dict:
    group = typer.main.get_command(app)
    return {"textinv": group, **group.commands}


def test_each_short_flag_means_one_thing_in_every_command():
    meaning: dict[str, set[str]] = {}
    for command in _commands().values():
        for p in command.params:
            shorts = [o for o in (*p.opts, *p.secondary_opts) if not o.startswith("--")]
            longs = [o for o in p.opts if o.startswith("--")]
            for short in shorts:  # -o: where the command writes, a folder (--out) or a file (--output)
                long = longs[0] if longs else p.name
                meaning.setdefault(short, set()).add("--out" if long == "--output" else long)
    clashes = {short: longs for short, longs in meaning.items() if len(longs) > 1}
    assert clashes == {}
    # the letters the sampling flags take from InvokeAI, where a command has them
    assert meaning["-s"] == {"--steps"} and meaning["-n"] == {"--count"} and meaning["-f"] == {"--strength"}


def test_the_clash_check_sees_a_letter_used_twice():
    clashing = typer.Typer()

    @clashing.command()
    def a(x: int = typer.Option(1, "--steps", "-s")):
        pass

    @clashing.command()
    def b(y: str = typer.Option("", "--set", "-s")):
        pass

    group = typer.main.get_command(clashing)
    seen = {o: p.opts[0] for c in group.commands.values() for p in c.params for o in p.opts if not o.startswith("--")}
    assert len(seen) == 1 and len({p.opts[0] for c in group.commands.values() for p in c.params}) == 2


@pytest.mark.parametrize("command", ["", *sorted(set(_commands()) - {"textinv"})])
def test_help_fits_80_columns_uncut_and_flags_show_no_type(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    res = runner.invoke(app, [command, "--help"] if command else ["--help"])
    assert res.exit_code == 0, res.output
    text = ANSI.sub("", res.output)
    assert "…" not in text, [line for line in text.splitlines() if "…" in line]
    assert "<bool>" not in text and "<list[str]>" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_train_json_is_one_object_at_the_end(tmp_path, tiny_model_dir):
    images = make_images(tmp_path / "cat")
    res = runner.invoke(app, ["train", str(images), "-i", "cat", "--model", str(tiny_model_dir), "--max-steps", "2",
                              "--out", str(tmp_path / "logs"), "--set", "data.resolution=32", "--set",
                              "log.image_every=0", "--set", "log.formats=[pt, safetensors]", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)  # the whole of stdout is one object
    (run,) = (tmp_path / "logs").iterdir()
    assert got["run_dir"] == str(run) and got["step"] == 2 and got["max_steps"] == 2
    assert got["files"] == [str(run / "embeddings" / "cat.pt"), str(run / "embeddings" / "cat.safetensors")]
    assert got["embedding"] == got["files"][0] and isinstance(got["final_loss"], float)


def test_only_the_first_process_prints_results(tmp_path, monkeypatch):
    src = save_embedding(Embedding([Token("<cat>", torch.ones(1, 8))]), tmp_path / "cat.pt")
    args = ["convert", str(src), str(tmp_path / "out"), "--for", "a1111"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0 and "use" in first.stdout
    monkeypatch.setenv("RANK", "1")  # what torchrun sets in the second process of `accelerate launch`
    second = runner.invoke(app, [*args[:2], str(tmp_path / "out2"), "--for", "a1111"])
    assert second.exit_code == 0 and second.stdout == "" and second.stderr == ""
    assert (tmp_path / "out2.pt").is_file()


def test_other_libraries_warnings_show_only_with_verbose(tmp_path, monkeypatch):
    import textinv.cli_output as output

    shown = []
    monkeypatch.setattr(output, "_python_showwarning", lambda *a, **k: shown.append(a[0]))
    for verbose in (False, True):
        monkeypatch.setitem(output.state, "verbose", verbose)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = output.show_warning
            warnings.warn("torch_dtype is deprecated", FutureWarning, stacklevel=1)
    assert [str(m) for m in shown] == ["torch_dtype is deprecated"]  # only the verbose round


def _run(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "textinv", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=600)


def test_quiet_json_generation_leaves_stderr_empty_with_the_libraries_present(tmp_path):
    import diffusers  # noqa: F401  (present: what would print is installed)
    import transformers  # noqa: F401

    res = _run("-q", "generate", "a photo of a red circle", "--model", "toy", "-n", "1", "-s", "2", "--json",
               "--out", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert json.loads(res.stdout)["seed"] is not None
    # and inspect --model: our lines only, nothing of diffusers' or transformers'
    emb = save_embedding(Embedding([Token("<x>", torch.randn(1, 64) * 0.01)]), tmp_path / "x.pt")
    res = _run("inspect", str(emb), "--model", "toy", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert not re.search(r"deprecat|torchvision|Loading pipeline|it/s\]|FutureWarning", res.stderr), res.stderr


# --- start-up: the file commands need no model library ----------------------------------------------------------

_PROBE = """
import atexit, sys
HEAVY = ("diffusers", "transformers", "accelerate", "matplotlib")
SDXL = "diffusers.pipelines.stable_diffusion_xl"
def report():
    found = {m.split(".")[0] for m in sys.modules} & set(HEAVY)
    found |= {"sdxl"} if any(m.startswith(SDXL) for m in sys.modules) else set()
    print("HEAVY=" + ",".join(sorted(found)), file=sys.stderr)
atexit.register(report)
sys.argv = ["textinv", *sys.argv[1:]]
from textinv.cli import main
main()
"""


def _imports_of(*args: str, env: dict | None = None) -> tuple[int, set[str]]:
    res = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **(env or {})})
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("HEAVY=")]
    return res.returncode, {m for m in line.removeprefix("HEAVY=").split(",") if m}


def test_file_commands_import_no_model_library(tmp_path, real_embeddings):
    src = real_embeddings / "a1111_bad-hands-5.pt"
    other = save_embedding(Embedding([Token("<x>", torch.ones(1, 768))]), tmp_path / "x.safetensors")
    for args in (["inspect", str(src), str(other), "--json"],
                 ["convert", str(src), str(tmp_path / "a.safetensors")],
                 ["convert", str(src), str(tmp_path / "a.png")],
                 ["merge", str(src), str(other), "-o", str(tmp_path / "m.pt")]):
        code, heavy = _imports_of(*args)
        assert code == 0 and heavy == set(), (args[0], heavy)


def test_fetch_search_imports_no_model_library(concepts):  # noqa: F811
    from huggingface_hub import constants

    code, heavy = _imports_of("fetch", "--search", "cat", "--json",
                              env={"HF_ENDPOINT": constants.ENDPOINT, "HF_HUB_OFFLINE": "0",
                                   "HF_TOKEN_PATH": os.devnull})
    assert code == 0 and heavy == set()


def test_the_import_probe_sees_a_model_command_import_them(tmp_path):
    code, heavy = _imports_of("generate", "a photo", "--model", "toy", "-n", "1", "-s", "1", "--out", str(tmp_path))
    assert code == 0 and {"diffusers", "transformers"} <= heavy
    assert not {"matplotlib", "sdxl"} & heavy  # an SD1.x model: neither the plots nor the SDXL pipelines


def test_a_terminal_is_told_which_model_loads(monkeypatch):
    import io

    from rich.console import Console

    import textinv.cli_output as output

    for terminal in (True, False):
        buf = io.StringIO()
        monkeypatch.setattr(output, "err", Console(file=buf, force_terminal=terminal, width=120))
        output.say_loading("toy")
        output.say_loading("someone/model")
        text = ANSI.sub("", buf.getvalue())
        assert text == ("loading the model toy (the small shipped one)\nloading the model someone/model\n"
                        if terminal else "")  # a log or a pipe keeps an error to its one line
