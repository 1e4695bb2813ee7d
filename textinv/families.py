"""Which packaged config fits a model, and the refusal of one that does not (SD1.x/SD2.x against SDXL).

A config names its family in `model.family`. Without `--config`, the family is read from the model's
`model_index.json` (or a single file's keys) without loading any weights, and the matching config is used. After
the model is loaded, `check_config` refuses an SD1.x/SD2.x config on an SDXL model and the reverse, before the run
folder is written. (SD1.x and SD2.x configs stay interchangeable: they differ in values, not in what they train.)
"""

from __future__ import annotations

import json
from pathlib import Path

from textinv.errors import ConfigError

CONFIG_FOR = {"SD1.x": "v1-finetune", "SD2.x": "v2-finetune", "SDXL": "sdxl-finetune"}


def default_config(source: str | None) -> str:
    """The packaged config for the model at `source`: sdxl-finetune for an SDXL model, else v1-finetune."""
    return CONFIG_FOR["SDXL"] if source and peek_is_sdxl(source) else CONFIG_FOR["SD1.x"]


def peek_is_sdxl(source: str) -> bool:
    """Whether `source` is an SDXL model, from its model_index.json (folder or cached hub model) or a single file's
    keys; False when that cannot be told without loading it (the check after loading still applies)."""
    from textinv import models

    try:
        kind, location = models.resolve_source(source)
    except Exception:  # a bad source is reported, with its own message, when the model is loaded
        return False
    if kind == "single-file":
        return _file_has_second_encoder(Path(location))
    index = Path(location) / "model_index.json" if kind != "hub" else _cached_index(location)
    try:
        data = json.loads(index.read_text()) if index is not None else {}
    except (OSError, ValueError):
        return False
    return "text_encoder_2" in data or "XL" in str(data.get("_class_name", ""))


def _cached_index(repo_id: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    from textinv.hub import cache_dir

    found = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=cache_dir())
    return Path(found) if isinstance(found, str) else None


def _file_has_second_encoder(path: Path) -> bool:
    if path.suffix.lower() != ".safetensors":
        return False  # reading a .ckpt's keys means loading it
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return any(k.startswith("conditioner.embedders.1.") for k in f.keys())  # noqa: SIM118 - not a dict
    except Exception:
        return False


def check_config(config_family: str | None, model_is_sdxl: bool, model_family: str, n_placeholders: int) -> None:
    """Refuse a config written for the other side of the SD1.x/SD2.x - SDXL line, and several placeholders on SDXL."""
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
