"""AUTOMATIC1111's `.pt`: {string_to_token, string_to_param: {'*': [n, dim]}, name, step, sd_checkpoint, ...}.

The webui's prompt word is the file's stem (textual_inversion.py `load_from_file`); diffusers reads `name` and
`string_to_param['*']`. textinv writes one token as '*' with `name` set to the placeholder and the token id as a
tensor (the paper code calls `.to(device)` on it), which is how our reader tells our files from the webui's.
"""

from __future__ import annotations

from pathlib import Path

from textinv.atomic import torch_save
from textinv.formats.common import Source, encoder_parts, name_or_none, single_token
from textinv.formats.consumers import DIFFUSERS_PICKLE
from textinv.formats.embedding import Embedding
from textinv.formats.paper import from_string_to_param, string_to_param_dict
from textinv.formats.record import Format
from textinv.safe_pickle import ParameterDictState

A1111_STAR_ID = 265  # CLIP's id for "*", which AUTOMATIC1111 writes for every embedding


def is_a1111(data) -> bool:
    return isinstance(data, dict) and "string_to_param" in data and ("name" in data or "step" in data)


def _recognise(data, metadata, source: Source) -> bool:
    return (
        source.container != "png"
        and is_a1111(data)
        and not isinstance(data["string_to_param"], ParameterDictState)
        and isinstance(data["string_to_param"], dict)
        and len(data["string_to_param"]) == 1
    )


def _read(data, metadata, source: Source) -> Embedding:
    tokens = data.get("string_to_token")
    ids = list(tokens.values()) if isinstance(tokens, dict) else []
    # The webui always stores '*' with the plain int 265; its prompt word is the file's stem. Ours stores the id
    # as a tensor and the placeholder in `name`.
    ours = bool(ids) and not isinstance(ids[0], int)
    name = (name_or_none(data.get("name")) or source.path.stem) if ours else source.path.stem
    return from_string_to_param(data, [name], source, "a1111-pt")


def _write(emb: Embedding, path: Path) -> None:
    tok = single_token(emb, "a1111-pt")
    if emb.multi_encoder:  # the webui's SDXL layout (SD3, Flux.1: + t5), also in a .pt
        data = encoder_parts(tok)
    else:
        data = string_to_param_dict(emb, {"*": tok.vectors.clone()})
    torch_save(data, path)


FORMATS = [
    Format(
        name="a1111-pt",
        description="AUTOMATIC1111 .pt (string_to_param '*'); what `train` writes",
        recognise=_recognise,
        read=_read,
        write=_write,
        extension=".pt",
        loads_in={
            "a1111": "{stem}",
            "invokeai": "<{stem}>",
            "comfyui": "embedding:{stem}",
            "kohya": "{stem}",
        },
        loads_if={"diffusers": DIFFUSERS_PICKLE},  # it reads `name` and string_to_param['*']
    )
]
