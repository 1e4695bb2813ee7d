"""kohya-ss sd-scripts: `{emb_params: [n, dim]}` in .safetensors (with `ss_*`/`modelspec.*` metadata) or .pt;
many AUTOMATIC1111 uploads (EasyNegative) use the same layout."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from textinv.atomic import atomic_write
from textinv.formats.common import (
    Source,
    encoder_parts,
    ours,
    placeholder,
    safetensors_metadata,
    single_token,
    token,
    with_metadata,
)
from textinv.formats.consumers import DIFFUSERS_EMB_PARAMS
from textinv.formats.embedding import Embedding
from textinv.formats.record import Format


def _is_emb_params(data) -> bool:
    return isinstance(data, dict) and set(data) == {"emb_params"}


def has_kohya_metadata(metadata: dict) -> bool:
    return any(k.startswith(("modelspec.", "ss_")) for k in metadata)


def _read(fmt: str):
    def read(data, metadata, source: Source) -> Embedding:
        found = ours(metadata, source.path)
        name = placeholder(found, source)
        emb = Embedding([token(name, data["emb_params"], source.path)], name=metadata.get("modelspec.title"),
                        source_format=fmt)
        return with_metadata(emb, found)

    return read


def _write(emb: Embedding, path: Path) -> None:
    tok = single_token(emb, "kohya")
    if emb.multi_encoder:
        data = encoder_parts(tok)
    else:
        data = {"emb_params": tok.vectors.contiguous()}
    meta = safetensors_metadata(emb)
    meta["modelspec.title"] = emb.name or tok.name
    atomic_write(path, lambda tmp: save_file(data, str(tmp), metadata=meta))


FORMATS = [
    Format(
        name="emb_params-pt",
        description="kohya emb_params in a torch pickle",
        recognise=lambda data, metadata, source: source.pickled and _is_emb_params(data),
        read=_read("emb_params-pt"),
    ),
    Format(
        name="kohya",
        description="kohya-ss emb_params .safetensors (SDXL: clip_l + clip_g)",
        recognise=lambda data, metadata, source: (
            not source.pickled and _is_emb_params(data) and has_kohya_metadata(metadata)
        ),
        read=_read("kohya"),
        write=_write,
        extension=".safetensors",
        loads_in={"a1111": "{stem}", "invokeai": "<{stem}>", "comfyui": "embedding:{stem}", "kohya": "{stem}"},
        loads_if={"diffusers": DIFFUSERS_EMB_PARAMS},  # its one key, emb_params, is not the token
    ),
    Format(
        name="a1111-safetensors",
        description="emb_params .safetensors without kohya's metadata (AUTOMATIC1111 uploads)",
        recognise=lambda data, metadata, source: not source.pickled and _is_emb_params(data),
        read=_read("a1111-safetensors"),
    ),
]
