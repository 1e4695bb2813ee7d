"""The `dream>` prompt of InvokeAI 2.x: read a prompt and flags per line, keep the model loaded, exit on q or EOF.

A line is `"a photo of *" -s100 -n4 --init_img=./sketch.png --strength=0.5`: a prompt (quoted, or the words up
to the first flag) followed by `textinv generate`'s own flags, in dash or underscore spelling.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path

QUIT = ("q", "quit", "exit", ":q")


def split_line(line: str) -> list[str]:
    """Arguments for `textinv generate` from one dream> line; `--init_img=x` becomes `--init-img=x`.

    Raises ValueError for unbalanced quotes.
    """
    words = shlex.split(line)
    prompt: list[str] = []
    while words and not _is_flag(words[0]):
        prompt.append(words.pop(0))
    args = [" ".join(prompt)] if prompt else []
    for word in words:
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            word = name.replace("_", "-") + eq + value
        args.append(word)
    return args


def _is_flag(word: str) -> bool:
    return word.startswith("-") and len(word) > 1 and not word[1:2].isdigit()


def stdin_is_terminal() -> bool:
    """dream> only opens on a terminal; with a pipe or file on stdin there is no one to type."""
    return sys.stdin.isatty()


def history_file() -> Path:
    return Path.home() / ".cache" / "textinv" / "dream_history"


def run(
    handle: Callable[[list[str]], None],
    *,
    read: Callable[[str], str] | None = None,
    on_error: Callable[[str], None] = lambda message: None,
    history: Path | None = None,
) -> int:
    """Read lines until `q` or EOF, passing each line's arguments to `handle`; returns the number of lines run.

    `handle` reports its own results and errors; a line that cannot be split goes to `on_error`. With `history`,
    readline keeps past lines there (arrow keys recall them).
    """
    read = read or input
    readline = _readline(history)
    count = 0
    try:
        while True:
            try:
                line = read("dream> ").strip()
            except (EOFError, KeyboardInterrupt):
                return count
            if not line:
                continue
            if line.lower() in QUIT:
                return count
            try:
                args = split_line(line)
            except ValueError as e:
                on_error(f"cannot read that line ({e}); quote the prompt, e.g. \"a photo of *\" -s 50")
                continue
            handle(args)
            count += 1
    finally:
        if readline is not None and history is not None:
            try:
                history.parent.mkdir(parents=True, exist_ok=True)
                readline.write_history_file(str(history))
            except OSError:
                pass


def _readline(history: Path | None):
    if history is None:
        return None
    try:
        import readline
    except ImportError:  # Windows without pyreadline
        return None
    try:
        readline.read_history_file(str(history))
    except OSError:
        pass
    readline.set_history_length(1000)
    return readline
