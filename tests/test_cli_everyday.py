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


def _commands(typer_app=app) -> dict:
    group = typer.main.get_command(typer_app)
    return {"textinv": group, **group.commands}


def short_flag_meanings(commands: dict) -> dict[str, set[str]]:
    """Each short flag -> the long options it stands for across `commands`."""
    meaning: dict[str, set[str]] = {}
    for command in commands.values():
        for p in command.params:
            shorts = [o for o in (*p.opts, *p.secondary_opts) if not o.startswith("--")]
            longs = [o for o in p.opts if o.startswith("--")]
            for short in shorts:  # -o: where the command writes, a folder (--out) or a file (--output)
                long = longs[0] if longs else p.name
                meaning.setdefault(short, set()).add("--out" if long == "--output" else long)
    return meaning


def test_each_short_flag_means_one_thing_in_every_command():
    meaning = short_flag_meanings(_commands())
    clashes = {short: longs for short, longs in meaning.items() if len(longs) > 1}
    assert clashes == {}
    # the letters the sampling flags take from InvokeAI, where a command has them
    assert meaning["-s"] == {"--steps"} and meaning["-n"] == {"--count"} and meaning["-f"] == {"--strength"}


def test_the_check_sees_a_letter_with_two_meanings():
    clashing = typer.Typer()

    @clashing.command()
    def a(x: int = typer.Option(1, "--steps", "-s")):
        pass

    @clashing.command()
    def b(y: str = typer.Option("", "--set", "-s")):
        pass

    assert short_flag_meanings(_commands(clashing))["-s"] == {"--steps", "--set"}


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

    res, heavy = _probed("-q", "generate", "a photo of a red circle", "--model", "toy", "-n", "1", "-s", "2",
                         "--json", "--out", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert json.loads(res.stdout)["seed"] is not None
    # the probe sees a model command import the model libraries, and an SD1.x one neither the plots nor SDXL's
    assert {"diffusers", "transformers"} <= heavy and not {"matplotlib", "sdxl"} & heavy


@pytest.mark.slow  # two more model-loading processes (a minute on a busy 2-core machine)
def test_eval_and_inspect_with_a_model_print_nothing_of_the_libraries(tmp_path):
    # eval, quiet, into a log: nothing but its JSON
    from textinv.toy import world

    world.write_concept(tmp_path / "pics", "purple", "triangle", n=2)
    cand = save_embedding(Embedding([Token("*", torch.randn(1, 64) * 0.01)], step=1, init_words={"*": "triangle"}),
                          tmp_path / "c.pt")
    res = _run("-q", "eval", str(cand), "--data", str(tmp_path / "pics"), "--model", "toy", "--seeds", "1", "-s",
               "1", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "" and json.loads(res.stdout)["rows"]
    # and inspect --model: our lines only, nothing of diffusers' or transformers'
    emb = save_embedding(Embedding([Token("<x>", torch.randn(1, 64) * 0.01)]), tmp_path / "x.pt")
    res = _run("inspect", str(emb), "--model", "toy", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert not re.search(r"deprecat|torchvision|Loading pipeline|it/s\]|FutureWarning", res.stderr), res.stderr


# --- start-up: the file commands need no model library ----------------------------------------------------------

_PROBE = """
import atexit, os, sys
HEAVY = ("diffusers", "transformers", "accelerate", "matplotlib")
SDXL = "diffusers.pipelines.stable_diffusion_xl"
def report():
    found = {m.split(".")[0] for m in sys.modules} & set(HEAVY)
    found |= {"sdxl"} if any(m.startswith(SDXL) for m in sys.modules) else set()
    with open(os.environ["TEXTINV_PROBE_OUT"], "w") as f:
        f.write(",".join(sorted(found)))
atexit.register(report)
sys.argv = ["textinv", *sys.argv[1:]]
from textinv.cli import main
main()
"""


def _probed(*args: str, env: dict | None = None, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, set]:
    """`textinv ARGS` in a fresh process, and the model libraries it had imported when it exited."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "imports"
        res = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=600,
                             cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {}),
                                           "TEXTINV_PROBE_OUT": str(out)})
        return res, {m for m in out.read_text().split(",") if m}


def _imports_of(*args: str, env: dict | None = None) -> tuple[int, set[str]]:
    res, heavy = _probed(*args, env=env)
    return res.returncode, heavy


def test_file_commands_import_no_model_library(tmp_path, real_embeddings):
    src = real_embeddings / "a1111_bad-hands-5.pt"
    other = save_embedding(Embedding([Token("<x>", torch.ones(1, 768))]), tmp_path / "x.safetensors")
    for args in (["inspect", str(src), str(other), "--json"],
                 ["convert", str(src), str(tmp_path / "a.png")],
                 ["merge", str(src), str(other), "-o", str(tmp_path / "m.safetensors"), "--split"]):
        code, heavy = _imports_of(*args)
        assert code == 0 and heavy == set(), (args[0], heavy)


def test_fetch_search_imports_no_model_library(concepts):  # noqa: F811
    from huggingface_hub import constants

    code, heavy = _imports_of("fetch", "--search", "cat", "--json",
                              env={"HF_ENDPOINT": constants.ENDPOINT, "HF_HUB_OFFLINE": "0",
                                   "HF_TOKEN_PATH": os.devnull})
    assert code == 0 and heavy == set()


def test_a_terminal_is_told_which_model_loads(monkeypatch):
    import io

    from rich.console import Console

    import textinv.cli_output as output

    monkeypatch.setitem(output.state, "quiet", False)  # as a command without -q sets it
    for terminal in (True, False):
        buf = io.StringIO()
        monkeypatch.setattr(output, "err", Console(file=buf, force_terminal=terminal, width=120))
        output.say_loading("toy")
        output.say_loading("someone/model")
        text = ANSI.sub("", buf.getvalue())
        assert text == ("loading the model toy (the small shipped one)\nloading the model someone/model\n"
                        if terminal else "")  # a log or a pipe keeps an error to its one line


# --- alive: what a long pause is spent on, and eval's own progress ------------------------------------------------


def test_the_training_lines_say_what_is_drawn_between_steps():
    import io

    from rich.console import Console

    from textinv.progress import TrainProgress

    buf = io.StringIO()
    progress = TrainProgress(Console(file=buf, width=200), plain=True, every_s=0)
    progress.start("train", 4, note="training in logs/x from step 0 to 4")
    progress.advance("train", 1, loss=0.5, lr=0.01)
    progress.status("drawing samples_scaled, 4 images")
    progress.status("saving the checkpoint")
    assert buf.getvalue().splitlines()[-2:] == ["step 1: drawing samples_scaled, 4 images",
                                                "step 1: saving the checkpoint"]
    quiet = io.StringIO()
    TrainProgress(Console(file=quiet), quiet=True).status("drawing samples, 4 images")
    assert quiet.getvalue() == ""


def test_the_live_training_bar_shows_the_status_until_the_next_step():
    import io

    from rich.console import Console

    from textinv.progress import TrainProgress

    progress = TrainProgress(Console(file=io.StringIO(), force_terminal=True, width=200), plain=False)
    progress.start("train", 4)
    progress.status("drawing samples_scaled, 4 images")
    task = progress.bar.tasks[0]
    assert task.fields["status"] == "drawing samples_scaled, 4 images"
    progress.advance("train", 1, loss=0.5, lr=0.01)
    assert task.fields["status"] == ""
    progress.finish("train")


def test_eval_progress_counts_images_with_elapsed_and_time_left(monkeypatch):
    import io

    from rich.console import Console

    import textinv.progress as progress_module

    clock = iter([100.0, 110.0, 130.0, 160.0])
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    buf = io.StringIO()
    progress = progress_module.EvalProgress(Console(file=buf, width=200), plain=True, every_s=0)
    progress.start("eval", 12, note="scoring 3 candidate(s): 12 images, 4 seed(s) per prompt")
    progress.status("step 20: drawing 'a photo of *', 4 images")
    progress.advance("eval", 4)  # 10 s for 4 images: 20 s left for 8
    progress.advance("eval", 8)
    progress.advance("eval", 12)
    assert buf.getvalue().splitlines() == [
        "scoring 3 candidate(s): 12 images, 4 seed(s) per prompt",
        "eval 4/12 images, 00:00:10 elapsed, 00:00:20 left: step 20: drawing 'a photo of *', 4 images",
        "eval 8/12 images, 00:00:30 elapsed, 00:00:15 left: step 20: drawing 'a photo of *', 4 images",
        "eval 12/12 images, 00:01:00 elapsed, 00:00:00 left",
    ]


def test_eval_reports_every_image_it_makes(tmp_path, tiny_model_dir):
    from textinv.evaluation.evaluate import EvalSettings, evaluate
    from textinv.reporting import Reporter

    class Seen(Reporter):
        def __init__(self):
            self.total, self.done, self.statuses = 0, [], []

        def start(self, task, total, *, done=0, note=""):
            self.total = total

        def advance(self, task, done, **values):
            self.done.append(done)

        def status(self, text):
            self.statuses.append(text)

    images = make_images(tmp_path / "cat")
    a = save_embedding(Embedding([Token("<a>", torch.randn(1, 32))], step=5, init_words={"<a>": "cat"}),
                       tmp_path / "a.pt")
    seen = Seen()
    evaluate([a], data=images, model=str(tiny_model_dir), settings=EvalSettings(seeds=2, steps=1, clip=None),
             reporter=seen)
    assert seen.total == 2 * 2 and seen.done == [2, 4]  # the init word's row and the file's: 2 seeds each
    assert seen.statuses == ["init word (cat): drawing 'a photo of cat', 2 images",
                             "a.pt: drawing 'a photo of *', 2 images"]
