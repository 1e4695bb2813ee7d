"""SDXL embeddings: one tensor per text encoder. `{clip_l: [n, 768], clip_g: [n, 1280]}` (AUTOMATIC1111, kohya,
diffusers-safetensors as textinv writes it) and XL-Inversion's `{emb, emb2}` (or a list of such snapshots)."""

from __future__ import annotations

from textinv.errors import EmbeddingFormatError
from textinv.formats.common import ENCODER_KEYS, Source, ours, placeholder, token, with_metadata
from textinv.formats.embedding import Embedding
from textinv.formats.kohya import has_kohya_metadata
from textinv.formats.record import Format


def _has_clip_keys(data) -> bool:
    return isinstance(data, dict) and any(key in data for key in ENCODER_KEYS)


def _read_clip(fmt: str):
    def read(data, metadata, source: Source) -> Embedding:
        if any(key not in data for key in ENCODER_KEYS):
            raise EmbeddingFormatError(f"{source.path}: an SDXL embedding needs both clip_l and clip_g; one is missing")
        found = ours(metadata, source.path)
        name = placeholder(found, source)
        first, second = (data[key] for key in ENCODER_KEYS)
        emb = Embedding([token(name, first, source.path, second)],
                        name=metadata.get("modelspec.title"), source_format=fmt)
        return with_metadata(emb, found)

    return read


def _is_snapshot_list(data) -> bool:
    return isinstance(data, list) and bool(data) and all(isinstance(d, dict) and "emb" in d for d in data)


def _read_xl_inversion(data, metadata, source: Source) -> Embedding:
    tok = token(source.path.stem, data["emb"], source.path, data["emb2"])
    return Embedding([tok], name=source.path.stem, source_format="xl-inversion")


def _read_snapshots(data, metadata, source: Source) -> Embedding:
    if set(data[-1]) != {"emb", "emb2"}:
        raise EmbeddingFormatError(f"{source.path}: the last XL-Inversion snapshot lacks 'emb2'")
    emb = _read_xl_inversion(data[-1], metadata, source)
    emb.source_format = "xl-inversion-list"
    emb.extra["snapshots"] = str(len(data))
    return emb


FORMATS = [
    Format(
        name="sdxl-pt",
        description="SDXL clip_l + clip_g in a torch pickle",
        recognise=lambda data, metadata, source: source.pickled and _has_clip_keys(data),
        read=_read_clip("sdxl-pt"),
    ),
    Format(
        name="kohya-sdxl",
        description="kohya-ss SDXL .safetensors (clip_l + clip_g with modelspec metadata)",
        recognise=lambda data, metadata, source: _has_clip_keys(data) and has_kohya_metadata(metadata),
        read=_read_clip("kohya-sdxl"),
    ),
    Format(
        name="sdxl-safetensors",
        description="AUTOMATIC1111 / textinv SDXL .safetensors (clip_l + clip_g)",
        recognise=lambda data, metadata, source: _has_clip_keys(data),
        read=_read_clip("sdxl-safetensors"),
    ),
    Format(
        name="xl-inversion",
        description="XL-Inversion .pt ({emb, emb2})",
        recognise=lambda data, metadata, source: isinstance(data, dict) and set(data) == {"emb", "emb2"},
        read=_read_xl_inversion,
    ),
    Format(
        name="xl-inversion-list",
        description="XL-Inversion .pt with a list of snapshots (the last is used)",
        recognise=lambda data, metadata, source: _is_snapshot_list(data),
        read=_read_snapshots,
    ),
]
