"""What a model is, told from its files without loading it: its architecture (SD1.x/SD2.x, SDXL, SD3, Flux.1), its
text encoders' widths and so its family, and so the packaged config that fits it and whether an embedding fits it,
in a second rather than after a multi-GB load.

A diffusers folder (or the hub cache, or `--model-config`) says it in `model_index.json` and
`text_encoder*/config.json`; a single `.safetensors` checkpoint says it in its header (the tensors' names and the
token-embedding tensors' shapes). A `.ckpt` is a pickle with no header to read cheaply: its fit is checked after
loading.
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
# SD3's single files (sd3.5_medium.safetensors): its MMDiT and, when included, its three text encoders.
_SD3_BLOCKS = "model.diffusion_model.joint_blocks."
_SD3 = ("text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight",
        "text_encoders.clip_g.transformer.text_model.embeddings.token_embedding.weight")
_SD3_T5 = ("text_encoders.t5xxl.transformer.shared.weight", "text_encoders.t5xxl.transformer.encoder.embed_tokens.weight")
_FLUX_BLOCKS = ("double_blocks.", "model.diffusion_model.double_blocks.")  # flux1-dev.safetensors, with or without prefix
_MAX_HEADER = 100 << 20  # a real header is a few hundred kB
# The architectures textinv tells apart (the `kind` of a model): what picks the conditioning, the denoiser and the
# training objective, and with the widths, the family. A model whose family the widths cannot name still has one.
KINDS = ("sd", "sdxl", "sd3", "flux")
_CONFIG_OF_KIND = {"sdxl": "SDXL", "sd3": "SD3", "flux": "Flux.1"}
_KIND_OF_FAMILY = {"SD1.x": "sd", "SD2.x": "sd", "SDXL": "sdxl", "SD3": "sd3", "Flux.1": "flux"}
_NAME = {"sd": "SD1.x/SD2.x", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux.1"}
_WHAT = {"sd": "one text encoder", "sdxl": "two text encoders", "sd3": "SD3's MMDiT and three text encoders",
         "flux": "Flux.1's transformer, CLIP-L and T5"}


def default_config(source: str | None) -> str:
    """The packaged config for the model at `source`: toy for the toy model (v1-finetune's 512 px on its 32 px
    model costs 256 times the compute, minutes a step on a CPU), sdxl-finetune, sd3-finetune or flux-finetune for
    those architectures, else v1-finetune."""
    if source == "toy":
        return "toy"
    kind = model_kind(source) if source else None
    return CONFIG_FOR[_CONFIG_OF_KIND.get(kind or "", "SD1.x")]


def peek_is_sdxl(source: str) -> bool:
    """Whether `source` is an SDXL model (see `model_kind`)."""
    return model_kind(source) == "sdxl"


def model_kind(source: str | Path | None) -> str | None:
    """'sd', 'sdxl', 'sd3' or 'flux' for the model `source` names, from its model_index.json (folder or cached hub
    model) or a single file's keys; None when that cannot be told without loading it (the checks after loading
    still apply)."""
    from textinv.models.source import resolve_source

    try:
        kind, location = resolve_source(source)
    except Exception:  # a bad source is reported, with its own message, when the model is loaded
        return None
    if kind == "single-file":
        header = _safetensors_header(Path(location))
        return kind_of_checkpoint(header) if header else None
    index = _index(kind, location)
    return kind_of_index(index) if index else None


def kind_of_index(index: dict) -> str:
    """The architecture a diffusers `model_index.json` (read as a dict) describes."""
    name = str(index.get("_class_name", ""))
    if "StableDiffusion3" in name or ("transformer" in index and "text_encoder_3" in index):
        return "sd3"
    if "Flux" in name or ("transformer" in index and "text_encoder_2" in index):
        return "flux"
    return "sdxl" if "text_encoder_2" in index or "XL" in name else "sd"


def kind_of_checkpoint(keys) -> str:
    """The architecture of an original-layout checkpoint, from its tensor names."""
    names = [str(k) for k in keys]
    if any(k.startswith(_SD3_BLOCKS) for k in names):
        return "sd3"
    if any(k.startswith(_FLUX_BLOCKS) for k in names):
        return "flux"
    return "sdxl" if is_sdxl_checkpoint(names) else "sd"


def is_sdxl_index(index: dict) -> bool:
    """Whether a diffusers `model_index.json` (read as a dict) describes an SDXL pipeline."""
    return kind_of_index(index) == "sdxl"


def is_sdxl_checkpoint(keys) -> bool:
    """Whether an original-layout checkpoint's tensor names include SDXL's second text encoder."""
    return any(str(k).startswith(_SDXL_SECOND_ENCODER) for k in keys)


def check_config(config_family: str | None, model_kind: str, model_family: str, n_placeholders: int) -> None:
    """Refuse a config written for another architecture than the model's (SD1.x/SD2.x, SDXL, SD3, Flux.1), and
    several placeholders on a model with several text encoders. (SD1.x and SD2.x configs stay interchangeable: they
    differ in values, not in what they train.) `model_kind` is `KINDS`' name, `model_family` the family's."""
    wanted = _KIND_OF_FAMILY.get(config_family or "")
    if wanted is not None and wanted != model_kind:
        use = CONFIG_FOR[_CONFIG_OF_KIND.get(model_kind, "SD1.x")]
        if model_kind == "sd":
            use = CONFIG_FOR.get(model_family, use)
        shown = model_family if not model_family.startswith("unknown") else _NAME[model_kind]
        raise ConfigError(
            f"the config is for {config_family} but the model is {shown} ({_WHAT[model_kind]}); use --config {use}"
        )
    if model_kind != "sd" and n_placeholders > 1:
        layout = {"sdxl": "{clip_l, clip_g}", "sd3": "{clip_l, clip_g, t5}", "flux": "{clip_l, t5}"}[model_kind]
        name = _NAME[model_kind]
        raise ConfigError(
            f"{n_placeholders} placeholders on {name}: an {name} embedding file ({layout}) holds one; "
            "train one placeholder per run"
        )


def check_config_early(config_family: str | None, source, model_config, n_placeholders: int) -> str | None:
    """`check_config` from the model's files, before it loads (a folder, a cached hub model, a single file's
    header); returns the model's kind, or None when the files do not tell it (the check after loading applies)."""
    from textinv.formats.families import family_for

    kind = model_kind(source)
    if kind is None:
        return None
    try:
        dims = text_encoder_dims(source, model_config)
    except Exception:  # a bad source is reported, with its own message, when the model is loaded
        dims = None
    family = family_for(*dims) if dims else f"unknown ({kind})"
    check_config(config_family, kind, family, n_placeholders)
    return kind


def text_encoder_dims(source: str | Path | None, model_config: str | Path | None = None) -> tuple | None:
    """The widths of the text encoders of the model `--model source` names, as `families` takes them: (width, width
    of the second encoder or None), and for SD3 (clip_l, clip_g, t5 or None when it has no T5); None when they
    cannot be told without loading it."""
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


def _index(kind: str, location: str) -> dict | None:
    """A model's model_index.json as a dict (a folder's, or a hub model's from the cache), or None."""
    index = _cached(location, "model_index.json") if kind == "hub" else Path(location) / "model_index.json"
    try:
        data = json.loads(index.read_text()) if index is not None else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _dims(config_of, index: dict | None) -> tuple | None:
    """The widths from each text encoder's config.json (`config_of(name)`: its path or None)."""
    widths = [_hidden_size(config_of(name)) for name in ("text_encoder", "text_encoder_2", "text_encoder_3")]
    if widths[0] is None:
        return None
    if index is not None and kind_of_index(index) == "sd3":  # its T5 may be left out (text_encoder_3: [null, null])
        return widths[0], widths[1], widths[2] if (index.get("text_encoder_3") or [None])[0] else None
    return widths[0], widths[1]


def _from_folder(folder: Path) -> tuple | None:
    index = _index("folder", str(folder))
    return _dims(lambda name: folder / name / "config.json", index)


def _from_hub_cache(repo_id: str) -> tuple | None:
    return _dims(lambda name: _cached(repo_id, f"{name}/config.json"), _index("hub", repo_id))


def _hidden_size(config: Path | None) -> int | None:
    """A text encoder's width from its config.json: `hidden_size` (CLIP), `d_model` (T5)."""
    if config is None:
        return None
    try:
        data = json.loads(config.read_text())
        value = data.get("hidden_size", data.get("d_model"))
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
    if first and second:
        return first, second
    clip_l, clip_g = (width(k) for k in _SD3)
    if clip_l and clip_g:  # an SD3 file with its text encoders; the T5 one is often left out
        return clip_l, clip_g, next((w for k in _SD3_T5 if (w := width(k))), None)
    return None
