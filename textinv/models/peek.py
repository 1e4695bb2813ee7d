"""What a model is, told from its files without loading it: its text encoders' widths and so its family, and so
the packaged config that fits it and whether an embedding fits it, in a second rather than after a multi-GB load.

A diffusers folder (or the hub cache, or `--model-config`) says it in `model_index.json` and
`text_encoder*/config.json`; a single `.safetensors` checkpoint says it in its header (the token-embedding tensors'
names and shapes). A `.ckpt` is a pickle with no header to read cheaply: its fit is checked after loading.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from textinv.errors import ConfigError, ModelError, UsageError
from textinv.formats.families import CONFIG_FOR

# Token-embedding tensors in original-layout checkpoints: SD1 (CLIP-L), SD2 (OpenCLIP-H), SDXL's two encoders.
_SD1 = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
_SD2 = "cond_stage_model.model.token_embedding.weight"
_SDXL = (
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.1.model.token_embedding.weight",
)
_SDXL_SECOND_ENCODER = "conditioner.embedders.1."
_MAX_HEADER = 100 << 20  # a real header is a few hundred kB


def default_config(source: str | None) -> str:
    """The packaged config for the model at `source`: toy for the toy model (v1-finetune's 512 px on its 32 px
    model costs 256 times the compute, minutes a step on a CPU), sdxl-finetune for an SDXL model, else
    v1-finetune."""
    if source == "toy":
        return "toy"
    return CONFIG_FOR["SDXL"] if source and peek_is_sdxl(source) else CONFIG_FOR["SD1.x"]


def peek_is_sdxl(source: str) -> bool:
    """Whether `source` is an SDXL model, from its model_index.json (folder or cached hub model) or a single file's
    keys; False when that cannot be told without loading it (the check after loading still applies)."""
    from textinv.models.source import resolve_source

    try:
        kind, location = resolve_source(source)
    except Exception:  # a bad source is reported, with its own message, when the model is loaded
        return False
    if kind == "single-file":
        return is_sdxl_checkpoint(_safetensors_header(Path(location)) or {})
    index = _cached(location, "model_index.json") if kind == "hub" else Path(location) / "model_index.json"
    try:
        data = json.loads(index.read_text()) if index is not None else {}
    except (OSError, ValueError):
        return False
    return is_sdxl_index(data)


def is_sdxl_index(index: dict) -> bool:
    """Whether a diffusers `model_index.json` (read as a dict) describes an SDXL pipeline."""
    return "text_encoder_2" in index or "XL" in str(index.get("_class_name", ""))


def is_sdxl_checkpoint(keys) -> bool:
    """Whether an original-layout checkpoint's tensor names include SDXL's second text encoder."""
    return any(str(k).startswith(_SDXL_SECOND_ENCODER) for k in keys)


def check_config(config_family: str | None, model_is_sdxl: bool, model_family: str, n_placeholders: int) -> None:
    """Refuse a config written for the other side of the SD1.x/SD2.x - SDXL line, and several placeholders on SDXL.
    (SD1.x and SD2.x configs stay interchangeable: they differ in values, not in what they train.)"""
    if config_family == "SDXL" and not model_is_sdxl:
        use = CONFIG_FOR.get(model_family, CONFIG_FOR["SD1.x"])
        raise ConfigError(
            f"the config is for SDXL but the model is {model_family} (one text encoder); use --config {use}"
        )
    if config_family in ("SD1.x", "SD2.x") and model_is_sdxl:
        raise ConfigError(
            f"the config is for {config_family} but the model is SDXL (two text encoders); use --config sdxl-finetune"
        )
    if model_is_sdxl and n_placeholders > 1:
        raise ConfigError(
            f"{n_placeholders} placeholders on SDXL: an SDXL embedding file ({{clip_l, clip_g}}) holds one; "
            "train one placeholder per run"
        )


def text_encoder_dims(source: str | Path | None, model_config: str | Path | None = None) -> tuple[int, int | None] | None:
    """(width, width of the second encoder or None) of the model `--model source` names; None when it cannot be
    told without loading it."""
    from textinv.models.source import resolve_source

    kind, location = resolve_source(source)
    if kind == "single-file":
        if model_config is not None:
            return _from_folder(Path(model_config))
        return _from_safetensors_header(Path(location))
    if kind == "hub":
        return _from_hub_cache(location)
    return _from_folder(Path(location))


def check_model(source: str | Path | None, model_config: str | Path | None = None) -> tuple[int, int | None] | None:
    """What `--model` and `--model-config` show before anything loads: the model exists (ModelError otherwise),
    `model_config` is a diffusers folder and is given only with a single-file model (whose configs it supplies);
    returns the text encoders' widths when the model's files tell them (`text_encoder_dims`), else None."""
    from textinv.models.source import resolve_source

    kind, _ = resolve_source(source)
    if model_config is not None:
        if kind != "single-file":
            raise UsageError(
                f"--model-config {model_config}: only a single .ckpt/.safetensors model takes a config folder; "
                f"{f'--model {source}' if source else 'the default model'} is a {_KIND_NAMES[kind]} with its own "
                "configs, so drop --model-config (model.config)"
            )
        check_config_folder(Path(model_config))
    return text_encoder_dims(source, model_config)


_KIND_NAMES = {"hub": "hub model", "folder": "diffusers folder", "toy": "diffusers folder (the toy model)"}


def check_config_folder(config: Path) -> None:
    """ModelError unless `config` (`--model-config`) is a diffusers model folder."""
    config = config.expanduser()
    if not (config / "model_index.json").is_file():
        what = "no such folder" if not config.exists() else "not a diffusers model folder (no model_index.json)"
        raise ModelError(
            f"--model-config {config}: {what}; pass the folder of a diffusers model of the same family, e.g. a "
            "downloaded stable-diffusion-v1-5"
        )


def check_fit(source, model_config, embeddings: list) -> None:
    """ModelError when an embedding's family (its widths) is not the model's, told from the model's files alone;
    also every `check_model` check."""
    from textinv.formats.families import check_fits

    dims = check_model(source, model_config)
    if dims is None:
        return
    for path, emb in embeddings:
        for tok in emb.tokens:
            check_fits(path, tok.name, tok.widths, dims)


def _cached(repo_id: str, filename: str) -> Path | None:
    """A file of a hub model from the local Hugging Face cache, or None; never the network."""
    from huggingface_hub import try_to_load_from_cache

    from textinv.hub import cache_dir

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir())
    return Path(found) if isinstance(found, str) else None


def _from_folder(folder: Path) -> tuple[int, int | None] | None:
    dim = _hidden_size(folder / "text_encoder" / "config.json")
    if dim is None:
        return None
    return dim, _hidden_size(folder / "text_encoder_2" / "config.json")


def _from_hub_cache(repo_id: str) -> tuple[int, int | None] | None:
    first = _cached(repo_id, "text_encoder/config.json")
    if first is None or (dim := _hidden_size(first)) is None:
        return None
    second = _cached(repo_id, "text_encoder_2/config.json")
    return dim, _hidden_size(second) if second is not None else None


def _hidden_size(config: Path) -> int | None:
    try:
        value = json.loads(config.read_text()).get("hidden_size")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def _safetensors_header(path: Path) -> dict | None:
    """The JSON header of a .safetensors file (tensor name -> dtype, shape, offsets), or None for another file."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > _MAX_HEADER:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None  # not safetensors (a .ckpt) or damaged: the loader says what is wrong
    return header if isinstance(header, dict) else None


def _from_safetensors_header(path: Path) -> tuple[int, int | None] | None:
    header = _safetensors_header(path)
    if header is None:
        return None

    def width(key: str) -> int | None:
        shape = header.get(key, {}).get("shape") if isinstance(header.get(key), dict) else None
        return shape[1] if isinstance(shape, list) and len(shape) == 2 and isinstance(shape[1], int) else None

    if (dim := width(_SD1) or width(_SD2)) is not None:
        return dim, None
    first, second = (width(k) for k in _SDXL)
    return (first, second) if first and second else None
