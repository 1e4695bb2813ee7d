"""The README is the manual: every `textinv` command it shows names a real subcommand and real options."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from textinv.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
runner = CliRunner()


def _code_lines() -> list[str]:
    """The lines inside the README's fenced code blocks."""
    lines, inside = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def _readme_commands() -> list[list[str]]:
    commands = []
    for line in _code_lines():
        line = line.split(" #")[0].strip().removeprefix("$ ")
        for part in re.split(r"\s*(?:&&|\|)\s*", line):
            if part.startswith("textinv ") or part.startswith("accelerate launch -m textinv "):
                words = shlex.split(part.replace("accelerate launch -m ", ""))
                commands.append(words[1:])
    return commands


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


@pytest.mark.parametrize("words", _readme_commands(), ids=lambda w: " ".join(w)[:60])
def test_readme_command_exists_with_its_options(words):
    global_options = {"--debug", "--quiet", "-q", "--version"}
    while words and words[0] in global_options:
        words = words[1:]
    assert words, "a bare `textinv`"
    command = words[0]
    help_text = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert help_text.exit_code == 0, f"`textinv {command}` is not a subcommand"
    for word in words[1:]:
        if word.startswith("-") and not re.fullmatch(r"-\d.*", word):
            option = word.split("=")[0]
            assert option in help_text.output, f"`textinv {command}` has no option {option}"


@pytest.mark.slow
def test_quick_start_runs_as_written(tmp_path):
    """Every line of the README's quick start, in a fresh folder, as a new user would type it."""
    import os
    import subprocess
    import sys

    text = README.read_text()
    section = text[text.index("## Quick start") :]
    block = section[section.index("```bash\n") + len("```bash\n") : section.index("\n```", section.index("```bash"))]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for line in block.splitlines():
        proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-2000:]}"
    assert (tmp_path / "textinv-demo" / "demo.png").is_file()
    assert len(list((tmp_path / "outputs").glob("*.png"))) >= 10
    assert json.loads(proc.stdout)["tokens"][0]["name"] == "<purple-triangle>"
