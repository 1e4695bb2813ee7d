"""Where a model comes from: `--model` as a hub id, a diffusers folder, a single checkpoint file or the shipped toy,
told apart without loading anything.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from textinv.errors import ModelError

if TYPE_CHECKING:
    pass


DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def toy_model_dir() -> Path:
    """The shipped toy model's folder, found by path: the product does not import the toy package."""
    return Path(__file__).parents[1] / "toy" / "model"


def resolve_source(source: str | Path | None) -> tuple[str, str]:
    """(kind, location) for `source`, `$TEXTINV_MODEL` or the default: kind is hub | folder | single-file | toy."""
    source = str(source or os.environ.get("TEXTINV_MODEL") or DEFAULT_MODEL)
    if source == "toy":
        folder = toy_model_dir()
        if not (folder / "model_index.json").is_file():
            raise ModelError(
                f"the toy model is not in this install ({folder} is missing); "
                "build it with `make toy-model` or pass --model with a hub id or a local folder"
            )
        return "toy", str(folder)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(
                f"{path} is a folder but not a diffusers model (no model_index.json); pass a diffusers folder, "
                "a .ckpt/.safetensors file or a hub id"
            )
        return "folder", str(path)
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelError(
                f"{path}: not a model file; --model takes a .ckpt/.safetensors file, a folder or a hub id"
            )
        return "single-file", str(path)
    looks_like_path = path.suffix.lower() in SINGLE_FILE_SUFFIXES or source.startswith((".", "/", "~"))
    if looks_like_path or not _HUB_ID.match(source):
        raise ModelError(f"model {source}: no such file or folder (and not a hub id like {DEFAULT_MODEL})")
    return "hub", source
