"""Load Stable Diffusion pipelines from wherever users keep them.

A model is a hub id (through the Hugging Face cache, so it works offline once cached), a local diffusers folder,
or a single `.ckpt`/`.safetensors` file as the original code used (`textinv.models.checkpoints`). The library never
prints: anything the user should hear about comes back as a string in `pipe.textinv.warnings`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from textinv import hub
from textinv.errors import ConfigError, ModelError, first_line
from textinv.formats.families import family_for
from textinv.hashing import model_hash
from textinv.models.checkpoints import load_single_file
from textinv.models.conditioning import kind_of
from textinv.models.info import ModelInfo
from textinv.models.source import DEFAULT_MODEL, resolve_source
from textinv.models.tokens import pool_at_end_of_text

_DTYPES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: `device` if given (and present), else CUDA, then Apple MPS, then the CPU."""
    if device is None or str(device) in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(str(device))
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu or leave it out")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {device}: Apple MPS is not available here; use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Half precision on a GPU, full precision on the CPU (fp16 convolutions there are slow or missing)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; use fp16, bf16 or fp32") from None


def load_pipeline(
    source: str | Path | None = None,
    *,
    model_config: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    img2img: bool = False,
):
    """Load a Stable Diffusion (1.x, 2.x, XL, 3/3.5) or Flux.1 pipeline, on `device` in `dtype`, ready to generate.

    Args:
        source: hub id, diffusers folder, `.ckpt`/`.safetensors` file or 'toy'; None reads $TEXTINV_MODEL, then
            falls back to DEFAULT_MODEL.
        model_config: for a single file, a local diffusers folder of the same family whose configs (and
            tokenizer) describe it, so that loading needs no network.
        img2img: return the image-to-image pipeline (sharing the same weights; see `as_img2img`).
    """
    kind, location = resolve_source(source)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    notes: list[str] = []
    if kind == "single-file":
        pipe = load_single_file(Path(location), model_config, torch_dtype, notes)
        name = Path(location).stem
    elif kind == "hub":
        pipe = _load_from_hub(location, torch_dtype)
        name = location
    else:
        pipe = _load_folder(Path(location), torch_dtype)
        name = "toy" if kind == "toy" else Path(location).name
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    pool_at_end_of_text(pipe)
    revision = _cached_revision(location) if kind == "hub" else None
    pipe.textinv = ModelInfo(name=name, source=location, kind=kind, family=model_family(pipe), warnings=notes,
                             revision=revision)
    return as_img2img(pipe) if img2img else pipe


def base_model_of(pipe, source: str) -> dict[str, object]:
    """What a trained embedding records of its model: its name, never a path of this machine (the hub id, the
    folder's name, the file's stem as AUTOMATIC1111's `sd_checkpoint_name` has it, or `toy`) and, for a single
    file, the short hash AUTOMATIC1111 (and civitai) match models by; for a hub model, the commit. `source` is
    what to record for a pipeline not loaded by `load_pipeline` (a path is cut to its last part)."""
    info: ModelInfo | None = getattr(pipe, "textinv", None)
    name = info.name if info else (Path(source).name if Path(source).exists() else source)
    fields: dict[str, object] = {"base_model": name, "base_model_hash": None, "extra": {}}
    if info is None:
        return fields
    if info.kind == "single-file":
        fields["base_model_hash"] = model_hash(info.source)
    elif info.revision:
        fields["extra"] = {"base_model_revision": info.revision}
    return fields


def as_img2img(pipe):
    """The image-to-image pipeline over the same modules (no copy, no reload; added tokens stay)."""
    return _variant(pipe, "img2img", "AutoPipelineForImage2Image")


def as_txt2img(pipe):
    """The text-to-image pipeline over the same modules."""
    return _variant(pipe, "txt2img", "AutoPipelineForText2Image")


def _variant(pipe, kind: str, auto_cls: str):
    is_img2img = "Img2Img" in type(pipe).__name__
    if is_img2img == (kind == "img2img"):
        return pipe
    info: ModelInfo | None = getattr(pipe, "textinv", None)
    if info is not None and kind in info.variants:
        return info.variants[kind]
    import diffusers  # the auto pipelines import every pipeline diffusers has (1-2 s): only when switching

    out = getattr(diffusers, auto_cls).from_pipe(pipe)
    out.set_progress_bar_config(disable=True)
    if info is not None:
        out.textinv = info
        info.variants[kind] = out
        info.variants["img2img" if kind == "txt2img" else "txt2img"] = pipe
    return out


def encoder_widths(pipe) -> tuple[int | None, ...]:
    """The token-embedding widths of a loaded pipeline's text encoders, as `formats.families` takes them: the first
    and the second (SDXL's CLIP-G, Flux.1's T5) or None; SD3's three, the T5 one None when it was left out."""
    te2 = getattr(pipe, "text_encoder_2", None)
    widths = (_width(pipe.text_encoder), _width(te2) if te2 is not None else None)
    if kind_of(pipe) == "sd3":
        te3 = pipe.text_encoder_3
        return (*widths, _width(te3) if te3 is not None else None)
    return widths


def text_encoders(pipe) -> list[tuple[str, str, object, object]]:
    """(part key, attribute, tokenizer, text encoder) of each text encoder `pipe` has, in order: the part key is
    the one an embedding's `Token.parts` keeps its vectors under (clip_l first; SDXL's and SD3's clip_g; SD3's and
    Flux.1's t5). SD3's T5 is left out when the model has none."""
    found = []
    for k, key in enumerate(("clip_l", "t5") if kind_of(pipe) == "flux" else ("clip_l", "clip_g", "t5")):
        suffix = f"_{k + 1}" if k else ""
        encoder = getattr(pipe, f"text_encoder{suffix}", None)
        if encoder is not None:
            found.append((key, f"text_encoder{suffix}", getattr(pipe, f"tokenizer{suffix}"), encoder))
    return found


def model_family(pipe) -> str:
    """SD1.x (768-dim text), SD2.x (1024), SDXL (768+1280), SD3 (+4096) or Flux.1 (768+4096), from the text
    encoders' widths."""
    return family_for(*encoder_widths(pipe))


def _width(text_encoder) -> int:
    return text_encoder.get_input_embeddings().weight.shape[1]


def _load_folder(folder: Path, torch_dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(
            str(folder), torch_dtype=torch_dtype, local_files_only=True, **_no_safety_checker(folder)
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"{folder}: not a loadable diffusers model ({first_line(e)})") from None


def _no_safety_checker(folder: Path) -> dict:
    """Skip the NSFW checker (as InvokeAI's --no-nsfw_checker and AUTOMATIC1111 do): it is a 1.2 GB model. A
    component the folder saved as absent (`[null, null]`: SD3 saved without its T5 encoder) is passed as None, as
    diffusers needs to load such a folder."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}
    absent = {k: None for k, v in index.items() if not k.startswith("_") and v in ([None, None], None)
              and k in ("text_encoder_3", "tokenizer_3")}
    return absent | ({"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {})


def _cached_revision(repo_id: str) -> str | None:
    """The commit of the repo's cached snapshot (its folder's name), without touching the network."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id, cache_dir=hub.cache_dir(), local_files_only=True, allow_patterns=["model_index.json"]
        )
    except (OSError, ValueError):
        return None
    return Path(folder).name


def _load_from_hub(repo_id: str, torch_dtype: torch.dtype):
    from diffusers import DiffusionPipeline
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    cache = hub.cache_dir()
    try:
        folder = snapshot_download(
            repo_id, cache_dir=cache, local_files_only=True, allow_patterns=["model_index.json"]
        )
    except (OSError, ValueError):
        folder = None
    if folder is None or not (Path(folder) / "model_index.json").is_file():
        if hub.offline():
            raise ModelError(
                f"model {repo_id} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 forbids downloading "
                "it; connect once without HF_HUB_OFFLINE, pass a local folder or .safetensors with --model, "
                "or try the tool with --model toy"
            )
    try:
        kwargs = {"safety_checker": None, "requires_safety_checker": False}
        try:
            return DiffusionPipeline.from_pretrained(
                repo_id, torch_dtype=torch_dtype, cache_dir=cache, local_files_only=True, **kwargs
            )
        except (OSError, ValueError):
            if hub.offline():
                raise
        return DiffusionPipeline.from_pretrained(repo_id, torch_dtype=torch_dtype, cache_dir=cache, **kwargs)
    except GatedRepoError:
        raise ModelError(
            f"model {repo_id} is gated on the hub: accept its license on huggingface.co, then `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"no model {repo_id} on the Hugging Face hub; check the id (e.g. {DEFAULT_MODEL})"
        ) from None
    except OSError:
        raise ModelError(
            f"model {repo_id} is not in the Hugging Face cache ({cache}) and could not be downloaded (no network, "
            "or no such model); check the id and the network, pass a local folder or .safetensors with --model, "
            "or try the tool with --model toy"
        ) from None
