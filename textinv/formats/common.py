"""What every format module shares: turning a stored tensor into vectors, and textinv's own metadata keys."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from textinv.errors import EmbeddingFormatError, MetadataWarning
from textinv.formats.embedding import Embedding, Token

MAX_VECTORS = 1024  # per token; A1111 allows 75
# The key each text encoder's vectors go under in a file that holds one tensor per encoder, in the order a Token
# keeps them (`vectors`, `vectors_2`): SDXL's CLIP-L and OpenCLIP-bigG, as AUTOMATIC1111, kohya and diffusers
# write them. SD3 adds a T5-XXL part and Flux.1 has CLIP-L and T5-XXL: OneTrainer keys that part `t5`
# (modules/modelSaver/stableDiffusion3/StableDiffusion3EmbeddingSaver.py:33, flux/FluxEmbeddingSaver.py:31),
# ComfyUI reads it as `t5xxl` (comfy/text_encoders/sd3_clip.py:37, flux.py:12, `embedding_key`).
ENCODER_KEYS = ("clip_l", "clip_g")
T5_KEY = "t5"  # OneTrainer's, and diffusers' advanced Flux script's
COMFYUI_T5_KEY = "t5xxl"
META_PREFIX = "textinv."  # our keys in safetensors metadata
PT_META_KEY = "textinv"  # our key in a .pt dict (A1111 / paper layout): a dict of strings, see `pt_metadata`
_JSON_KEYS = ("placeholders", "init_words", "extra", "num_vectors")


@dataclass
class Source:
    """Where the data being recognised came from: the file and its container ('torch-zip', 'png', ..., or
    'folder' for a concept folder)."""

    path: Path
    container: str

    @property
    def pickled(self) -> bool:
        return self.container.startswith("torch")


def warn(message: str) -> None:
    warnings.warn(message, MetadataWarning, stacklevel=3)


def token(name: str, value, path: Path, value_2=None, t5=None) -> Token:
    vectors = vectors_of(name, value, path)
    vectors_2 = vectors_of(name, value_2, path) if value_2 is not None else None
    t5_vectors = vectors_of(name, t5, path) if t5 is not None else None
    for key, other in (("clip_g", vectors_2), ("t5", t5_vectors)):
        if other is not None and other.shape[0] != vectors.shape[0]:
            raise EmbeddingFormatError(
                f"{path}: token {name!r} has {vectors.shape[0]} clip_l vectors but {other.shape[0]} {key} vectors"
            )
    dtype = str(value.dtype).removeprefix("torch.") if isinstance(value, torch.Tensor) else "float32"
    return Token(name, vectors, vectors_2, source_dtype=dtype, t5=t5_vectors)


def vectors_of(name: str, value, path: Path) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise EmbeddingFormatError(f"{path}: token {name!r} holds {type(value).__name__}, not a tensor")
    if not value.is_floating_point():
        raise EmbeddingFormatError(f"{path}: token {name!r} holds {value.dtype} numbers, not float vectors")
    t = value.detach().to("cpu", torch.float32)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise EmbeddingFormatError(f"{path}: token {name!r} has shape {list(value.shape)}, not [vectors, dim]")
    if t.shape[0] > MAX_VECTORS:
        raise EmbeddingFormatError(f"{path}: token {name!r} has {t.shape[0]} vectors; at most {MAX_VECTORS} make sense")
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise EmbeddingFormatError(f"{path}: token {name!r} holds {bad} NaN/inf values; the training diverged")
    return t.contiguous().clone()


def whole_number(value) -> int | None:
    """A step count from a file: an int, or a float that is a whole number; anything else (NaN, inf) is None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value) if 0 <= value < 2**63 else None


def name_or_none(value) -> str | None:
    """A name field read from a file (`name`, ...): text, or None for anything else (a tensor, a list, '')."""
    return value if isinstance(value, str) and value else None


def text_or_none(value) -> str | None:
    """A text field read from a file: text or a number as text; None for NaN and anything else (a tensor, a list)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value) if isinstance(value, str | int | float) else None


# --- textinv's metadata (safetensors `textinv.*` keys) -----------------------------------------------------


def ours(metadata: dict[str, str], path: Path) -> dict:
    """Our `textinv.*` keys, decoded; a malformed one is dropped with a warning (the vectors are still good)."""
    found: dict = {}
    for key, value in metadata.items():
        if not key.startswith(META_PREFIX):
            continue
        k = key[len(META_PREFIX) :]
        try:
            found[k] = json.loads(value) if k in _JSON_KEYS else value
        except (ValueError, TypeError):
            warn(f"{path}: ignored the malformed metadata field {key!r}")
    return _checked(found, path)


def _checked(found: dict, path: Path) -> dict:
    def is_text_dict(v) -> bool:
        return isinstance(v, dict) and all(isinstance(x, str) and isinstance(y, str) for x, y in v.items())

    checks = {
        "placeholders": lambda v: isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v),
        "init_words": is_text_dict,
        "extra": is_text_dict,
        "step": lambda v: whole_number(_int_or_none(v)) is not None,
    }
    for k, ok in checks.items():
        if k in found and not ok(found[k]):
            warn(f"{path}: ignored the malformed metadata field '{META_PREFIX}{k}'")
            del found[k]
    return found


def _int_or_none(text) -> int | None:
    try:
        return int(text)
    except (ValueError, TypeError):
        return None


def pt_metadata(emb: Embedding) -> dict:
    """What a `.pt` dict keeps of ours under PT_META_KEY (the run's name, init words, concept type, ...): only
    strings, which every loader we checked skips (tests/test_formats.py names each rule)."""
    meta = {"name": emb.name, "init_words": dict(emb.init_words), "extra": dict(emb.extra)}
    return {k: v for k, v in meta.items() if v not in (None, {}, "")}


def pt_metadata_of(value, path: Path) -> dict:
    """The PT_META_KEY entry of a `.pt` dict, checked as the safetensors fields are; anything malformed is
    dropped with a warning."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        warn(f"{path}: ignored the malformed metadata field {PT_META_KEY!r}")
        return {}
    found = {k: v for k, v in value.items() if k in ("name", "init_words", "extra")}
    if "name" in found and not isinstance(found["name"], str):
        warn(f"{path}: ignored the malformed metadata field '{PT_META_KEY}.name'")
        del found["name"]
    return _checked(found, path)


def placeholder(found: dict, source: Source) -> str:
    """The word of a one-key layout (emb_params, clip_l/clip_g): ours from the metadata, else the file's stem,
    which is what AUTOMATIC1111, InvokeAI, ComfyUI and kohya use."""
    return found["placeholders"][0] if found.get("placeholders") else source.path.stem


def with_metadata(emb: Embedding, found: dict) -> Embedding:
    placeholders = found.get("placeholders")
    if placeholders and len(placeholders) == len(emb.tokens):
        for tok, name in zip(emb.tokens, placeholders, strict=True):
            tok.name = name
    emb.name = found.get("name", emb.name)
    emb.step = int(found["step"]) if "step" in found else emb.step
    emb.base_model = found.get("base_model", emb.base_model)
    emb.base_model_hash = found.get("base_model_hash", emb.base_model_hash)
    emb.init_words.update(found.get("init_words", {}))
    emb.extra.update(found.get("extra", {}))
    return emb


def safetensors_metadata(emb: Embedding) -> dict[str, str]:
    """What we know, as `textinv.*` strings: travels in every safetensors file we write."""
    meta = {
        "placeholders": [t.name for t in emb.tokens],
        "num_vectors": [t.num_vectors for t in emb.tokens],
        "name": emb.name,
        "step": emb.step,
        "base_model": emb.base_model,
        "base_model_hash": emb.base_model_hash,
        "init_words": emb.init_words,
        "extra": emb.extra,
        "family": emb.family,
    }
    out = {"format": "pt"}
    for key, value in meta.items():
        if value not in (None, {}, []):
            out[META_PREFIX + key] = value if isinstance(value, str) else json.dumps(value)
    return out


def single_token(emb: Embedding, fmt: str) -> Token:
    """The one token of `emb`; several are refused, since the tools that read `fmt` would take only one."""
    if len(emb.tokens) != 1:
        names = ", ".join(t.name for t in emb.tokens)
        raise EmbeddingFormatError(
            f"the {fmt} format holds one token but this embedding has {len(emb.tokens)} ({names}): AUTOMATIC1111 "
            "refuses such a file, InvokeAI, ComfyUI and kohya would use its first token only (InvokeAI warns for "
            "a .pt) and diffusers fails; "
            "pass --split for one file per token, --token NAME for one, or write the paper layout (--to paper-pt)"
        )
    return emb.tokens[0]


def encoder_parts(tok: Token, t5_key: str = T5_KEY) -> dict[str, torch.Tensor]:
    """A multi-encoder token's vectors by encoder key ({clip_l: [n, 768], clip_g: [n, 1280]} for SDXL, + t5 for
    SD3, {clip_l, t5} for Flux.1; the T5 part under `t5_key`), each a contiguous copy, ready for torch.save or
    safetensors."""
    return {(t5_key if key == T5_KEY else key): v.contiguous().clone() for key, v in tok.parts.items()}


def require_single_encoder(emb: Embedding, fmt: str) -> None:
    if emb.multi_encoder:
        what = {"SD3": "an SD3", "Flux.1": "a Flux.1"}.get(emb.architecture or "", "an SDXL")
        raise EmbeddingFormatError(f"the {fmt} format cannot hold {what} embedding; write .safetensors instead")
