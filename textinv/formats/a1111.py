"""AUTOMATIC1111's `.pt`: {string_to_token, string_to_param: {'*': [n, dim]}, name, step, sd_checkpoint, ...}.

The webui's prompt word is the file's stem (textual_inversion.py `load_from_file`); diffusers reads `name` and
`string_to_param['*']`. textinv writes one token as '*' with `name` set to the placeholder and the token id as a
tensor (the paper code calls `.to(device)` on it), which is how our reader tells our files from the webui's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from textinv.atomic import torch_save
from textinv.embeddings import Embedding
from textinv.formats import paper
from textinv.formats.common import Source, single_token, text_or_none, token, whole_number
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
    ids = list((data.get("string_to_token") or {}).values())
    # The webui always stores '*' with the plain int 265; its prompt word is the file's stem. Ours stores the id
    # as a tensor and the placeholder in `name`.
    ours = bool(ids) and not isinstance(ids[0], int)
    name = str(data.get("name") or source.path.stem) if ours else source.path.stem
    return from_string_to_param(data, [name], source, "a1111-pt")


def from_string_to_param(data: dict, names: list[str], source: Source, fmt: str) -> Embedding:
    """The Embedding of an A1111/paper/PNG dict, with `names` for the tensors of `string_to_param`."""
    params = data["string_to_param"]
    tokens = [token(n, v, source.path) for n, v in zip(names, params.values(), strict=True)]
    return Embedding(
        tokens,
        name=text_or_none(data.get("name")),
        step=whole_number(data.get("step")),
        base_model=text_or_none(data.get("sd_checkpoint_name")),
        base_model_hash=text_or_none(data.get("sd_checkpoint")),
        source_format=fmt,
    )


def a1111_dict(emb: Embedding, values: dict) -> dict:
    """The keys AUTOMATIC1111 writes, around `values` (its string_to_param)."""
    return {
        "string_to_token": {k: torch.tensor(paper.clip_id(k)) for k in values},
        "string_to_param": values,
        "name": emb.tokens[0].name if len(emb.tokens) == 1 else emb.name,
        "step": emb.step or 0,
        "sd_checkpoint": emb.base_model_hash,
        "sd_checkpoint_name": emb.base_model,
    }


def _write(emb: Embedding, path: Path) -> None:
    tok = single_token(emb, "a1111-pt")
    if emb.is_sdxl:  # the webui's SDXL layout, also in a .pt
        data = {"clip_l": tok.vectors.clone(), "clip_g": tok.vectors_2.clone()}
    else:
        data = a1111_dict(emb, {"*": tok.vectors.clone()})
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
            "diffusers": "{token}",
        },
    )
]
