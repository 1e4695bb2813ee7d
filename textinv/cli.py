"""The `textinv` command line: parses arguments, calls the library, prints results. No logic lives here."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from textinv import __version__
from textinv.errors import NotBuiltError, TextinvError

app = typer.Typer(
    name="textinv",
    help="Textual inversion for Stable Diffusion: teach a model a new word from a few pictures.",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Results (and --json) go to stdout; status, warnings and errors to stderr.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

_state = {"debug": bool(os.environ.get("TEXTINV_DEBUG")), "quiet": False}


def _version(value: bool) -> None:
    if value:
        out.print(f"textinv {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks (also TEXTINV_DEBUG=1).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only results and errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Textual inversion for Stable Diffusion: teach a model a new word from a few pictures."""
    _state["debug"] = debug or _state["debug"]
    _state["quiet"] = quiet


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a library error into one red line on stderr and an exit code; --debug re-raises."""
    try:
        yield
    except TextinvError as e:
        if _state["debug"]:
            raise
        err.print(f"[red]error:[/red] {e}", markup=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        if _state["debug"]:
            raise
        err.print("[red]interrupted[/red]")
        raise typer.Exit(130) from None


def info(message: str) -> None:
    """A status line on stderr, silenced by --quiet."""
    if not _state["quiet"]:
        err.print(message)


def print_json(obj: object) -> None:
    out.print(json.dumps(obj), markup=False, highlight=False, soft_wrap=True)


def _not_built(command: str) -> None:
    with user_errors():
        raise NotBuiltError(f"`textinv {command}` is not built yet; see the README for what works today")


# --- embeddings: inspect, convert, merge -------------------------------------------------------------------


@app.command(rich_help_panel="Embeddings")
def inspect(
    files: Annotated[list[Path], typer.Argument(help="Embedding files (any supported format) or concept folders.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per file.")] = False,
) -> None:
    """Show what an embedding file holds. Example: textinv inspect my_cat.pt"""
    _not_built("inspect")


@app.command(rich_help_panel="Embeddings")
def convert(
    src: Annotated[Path, typer.Argument(help="Embedding file to read (any supported format).")],
    dst: Annotated[Path, typer.Argument(help="Output file; its format follows the extension unless --to says.")],
) -> None:
    """Convert an embedding between formats. Example: textinv convert learned_embeds.bin my_cat.pt"""
    _not_built("convert")


@app.command(rich_help_panel="Embeddings")
def merge(
    files: Annotated[list[Path], typer.Argument(help="Embedding files to merge.")],
) -> None:
    """Merge several embedding files into one. Example: textinv merge a.pt b.bin -o both.pt"""
    _not_built("merge")


# --- concepts: fetch ---------------------------------------------------------------------------------------


@app.command(rich_help_panel="Embeddings")
def fetch(
    concept: Annotated[str | None, typer.Argument(help="Concept name (cat-toy) or hub repo id.")] = None,
) -> None:
    """Fetch a concept from the sd-concepts-library. Example: textinv fetch cat-toy"""
    _not_built("fetch")


# --- images: generate, img2img ------------------------------------------------------------------------------


@app.command(rich_help_panel="Images")
def generate(
    prompt: Annotated[str | None, typer.Argument(help="The prompt, e.g. 'a photo of *'.")] = None,
) -> None:
    """Make images from a prompt with embeddings. Example: textinv generate "a photo of *" --embedding my_cat.pt"""
    _not_built("generate")


@app.command(rich_help_panel="Images")
def img2img(
    prompt: Annotated[str, typer.Argument(help="The prompt.")],
) -> None:
    """Make images from a prompt and a starting image. Example: textinv img2img "a sketch of *" --init-img x.png"""
    _not_built("img2img")


# --- training: train, demo ------------------------------------------------------------------------------------


@app.command(rich_help_panel="Training")
def train(
    data_dir: Annotated[Path, typer.Argument(help="Folder of 3-5 images of the concept.")],
) -> None:
    """Learn an embedding from a folder of images. Example: textinv train ./my_cat --init-word cat"""
    _not_built("train")


@app.command(rich_help_panel="Training")
def demo() -> None:
    """Train and sample on the small shipped model, on the CPU, in a few minutes. Example: textinv demo"""
    _not_built("demo")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # outside a command body
        sys.exit(130)
