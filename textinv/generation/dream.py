"""The `dream>` prompt of InvokeAI 2.x: read a prompt and flags per line, keep the model loaded, exit on q or EOF.

A line is `"a photo of *" -s100 -n4 --init_img=./sketch.png --strength=0.5`: a prompt (quoted, or the words up
to the first flag) followed by `textinv generate`'s own flags, in dash or underscore spelling. The flags typed on
a line win; the others keep the values `textinv generate` was started with, except the flags that chose the
loaded model, which cannot change.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from textinv.errors import UsageError
from textinv.generation.sampling import Request

QUIT = ("q", "quit", "exit", ":q")
# The options of `textinv generate` that chose the model `Session.open` loaded: a dream> line cannot change them.
FIXED = ("model", "model_config", "device", "dtype")
# The options of `textinv generate` (by their parameter names) that make up a `Request`, besides prompt and init_img.
REQUEST_OPTIONS = ("negative", "n", "steps", "cfg", "seed", "width", "height", "scheduler", "strength", "batch_size")


def request_of(options: dict) -> Request:
    """The `Request` that `textinv generate`'s options (or a dream> line's, from `line_options`) ask for."""
    return Request(options["prompt"] or "", init_image=options["init_img"], **{k: options[k] for k in REQUEST_OPTIONS})


def line_options(command, args: list[str], start: dict) -> dict | None:
    """The options of one dream> line: `args` (from `split_line`) parsed with `command`, the (Typer) command of
    `textinv generate`, over `start`, the options it was started with. Flags typed on the line win and the others
    keep their `start` values, except `embedding` and `token`, which are only the line's: the embeddings to add to
    the session now. None for --help (the parser printed it).

    Raises UsageError for what the parser refuses, a line with no prompt, and a change to a FIXED option.
    """
    try:
        ctx = command.make_context("dream>", list(args))
    except Exception as e:
        if isinstance(e, RuntimeError) and hasattr(e, "exit_code"):  # Click's Exit: --help printed the help
            return None
        raise UsageError(e.format_message() if hasattr(e, "format_message") else str(e)) from None
    typed = {k: v for k, v in ctx.params.items() if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    if not typed.get("prompt"):
        raise UsageError('give a prompt first, e.g. "a photo of *" -s 50 -n 4')
    changed = [flag for flag in FIXED if flag in typed and typed[flag] != start[flag]]
    if changed:
        raise UsageError(f"--{changed[0].replace('_', '-')} cannot change inside dream>; quit (q) and restart")
    return {**start, "embedding": None, "token": None, **typed}


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
