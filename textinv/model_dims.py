"""The width of a model's text encoder(s), read without loading the model, so that an embedding that does not fit
is refused in a second rather than after a multi-GB load.

A diffusers folder (or the hub cache, or `--model-config`) says it in `text_encoder/config.json`; a single
`.safetensors` checkpoint says it in its header (the token-embedding tensor's shape). A `.ckpt` is a pickle with
no header to read cheaply: its fit is checked after loading, as before.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

# Token-embedding tensors in original-layout checkpoints: SD1 (CLIP-L), SD2 (OpenCLIP-H), SDXL's two encoders.
_SD1 = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
_SD2 = "cond_stage_model.model.token_embedding.weight"
_SDXL = (
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.1.model.token_embedding.weight",
)
_MAX_HEADER = 100 << 20  # a real header is a few hundred kB


def text_encoder_dims(source: str | Path | None, model_config: str | Path | None = None) -> tuple[int, int | None] | None:
    """(width, width of the second encoder or None) of the model `--model source` names; None when it cannot be
    told without loading it."""
    from textinv.models import resolve_source

    kind, location = resolve_source(source)
    if kind == "single-file":
        if model_config is not None:
            return _from_folder(Path(model_config))
        return _from_safetensors_header(Path(location))
    if kind == "hub":
        return _from_hub_cache(location)
    return _from_folder(Path(location))


def _from_folder(folder: Path) -> tuple[int, int | None] | None:
    dim = _hidden_size(folder / "text_encoder" / "config.json")
    if dim is None:
        return None
    return dim, _hidden_size(folder / "text_encoder_2" / "config.json")


def _from_hub_cache(repo_id: str) -> tuple[int, int | None] | None:
    from huggingface_hub import try_to_load_from_cache

    from textinv.hub import cache_dir

    def cached(filename: str) -> Path | None:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir())
        return Path(found) if isinstance(found, str) else None

    first = cached("text_encoder/config.json")
    if first is None or (dim := _hidden_size(first)) is None:
        return None
    second = cached("text_encoder_2/config.json")
    return dim, _hidden_size(second) if second is not None else None


def _hidden_size(config: Path) -> int | None:
    try:
        value = json.loads(config.read_text()).get("hidden_size")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def _from_safetensors_header(path: Path) -> tuple[int, int | None] | None:
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > _MAX_HEADER:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None  # not safetensors (a .ckpt) or damaged: the loader says what is wrong
    if not isinstance(header, dict):
        return None

    def width(key: str) -> int | None:
        shape = header.get(key, {}).get("shape") if isinstance(header.get(key), dict) else None
        return shape[1] if isinstance(shape, list) and len(shape) == 2 and isinstance(shape[1], int) else None

    if (dim := width(_SD1) or width(_SD2)) is not None:
        return dim, None
    first, second = (width(k) for k in _SDXL)
    return (first, second) if first and second else None


def check_fit(source, model_config, embeddings: list) -> None:
    """ModelError when an embedding's width is not the model's, told from the model's files alone."""
    from textinv.embeddings import family_for
    from textinv.pipeline_embeddings import _check_fits

    dims = text_encoder_dims(source, model_config)
    if dims is None:
        return
    dim, dim_2 = dims
    for path, emb in embeddings:
        for tok in emb.tokens:
            _check_fits(path, emb, tok, dim, dim_2, family_for(dim, dim_2))

