"""The original paper code's `.pt` (rinongal/textual_inversion): string_to_param is a pickled ParameterDict or a
dict keyed by placeholder; several tokens in one file are read by it and by InvokeAI 2.x."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from textinv.atomic import torch_save
from textinv.errors import EmbeddingFormatError
from textinv.formats.common import (
    PT_META_KEY,
    Source,
    pt_metadata,
    pt_metadata_of,
    require_single_encoder,
    text_or_none,
    token,
    whole_number,
    with_metadata,
)
from textinv.formats.consumers import TOKEN_ARGUMENT, Conditional
from textinv.formats.embedding import Embedding
from textinv.formats.record import Format
from textinv.safe_pickle import ParameterDictState

CLIP_ID_STAR = 265


@cache
def _byte_characters() -> list[str]:
    """CLIP's 256 byte characters in vocabulary order: the printable bytes as themselves, then the others mapped
    to chr(256), chr(257), ... (GPT-2's byte-level BPE table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]


def clip_id(placeholder: str) -> int:
    """CLIP's id for a one-character placeholder ('*' -> 265); other strings are not single CLIP tokens."""
    chars = _byte_characters()
    if len(placeholder) == 1 and placeholder in chars:
        return 256 + chars.index(placeholder)  # the end-of-word forms follow the 256 byte characters
    return CLIP_ID_STAR


def _one_token(emb: Embedding) -> bool:
    return len(emb.tokens) == 1


def _params(data) -> dict | None:
    params = data.get("string_to_param") if isinstance(data, dict) else None
    return params.parameters if isinstance(params, ParameterDictState) else params


def _recognise(data, metadata, source: Source) -> bool:
    return source.container != "png" and isinstance(data, dict) and "string_to_param" in data


def _read(data, metadata, source: Source) -> Embedding:
    params = _params(data)
    if not isinstance(params, dict) or not params:
        raise EmbeddingFormatError(f"{source.path}: 'string_to_param' holds no tensors; it is not a usable embedding")
    return from_string_to_param({**data, "string_to_param": params}, [str(k) for k in params], source, "paper-pt")


def _write(emb: Embedding, path: Path) -> None:
    require_single_encoder(emb, "paper-pt")
    torch_save(string_to_param_dict(emb, {t.name: t.vectors.clone() for t in emb.tokens}), path)


def from_string_to_param(data: dict, names: list[str], source: Source, fmt: str) -> Embedding:
    """The Embedding of an A1111/paper/PNG dict, with `names` for the tensors of `string_to_param`."""
    params = data["string_to_param"]
    tokens = [token(n, v, source.path) for n, v in zip(names, params.values(), strict=True)]
    emb = Embedding(
        tokens,
        name=text_or_none(data.get("name")),
        step=whole_number(data.get("step")),
        base_model=text_or_none(data.get("sd_checkpoint_name")),
        base_model_hash=text_or_none(data.get("sd_checkpoint")),
        source_format=fmt,
    )
    return with_metadata(emb, pt_metadata_of(data.get(PT_META_KEY), source.path))


def string_to_param_dict(emb: Embedding, values: dict) -> dict:
    """The paper code's keys, as AUTOMATIC1111 writes them too, around `values` (its string_to_param), and ours
    under PT_META_KEY (init words, the run's name), which those tools and InvokeAI, ComfyUI and kohya skip."""
    return {
        "string_to_token": {k: torch.tensor(clip_id(k)) for k in values},
        "string_to_param": values,
        "name": emb.tokens[0].name if len(emb.tokens) == 1 else emb.name,
        "step": emb.step or 0,
        "sd_checkpoint": emb.base_model_hash,
        "sd_checkpoint_name": emb.base_model,
        **({PT_META_KEY: meta} if (meta := pt_metadata(emb)) else {}),
    }


FORMATS = [
    Format(
        name="paper-pt",
        description="original paper code / InvokeAI 2.x .pt, one key per placeholder (several tokens allowed)",
        recognise=_recognise,
        read=_read,
        write=_write,
        extension=".pt",
        # with several tokens AUTOMATIC1111 refuses the file and the others take the first token only
        loads_if={
            **{tool: Conditional(word, "one token", _one_token) for tool, word in
               (("a1111", "{stem}"), ("invokeai", "<{stem}>"), ("comfyui", "embedding:{stem}"), ("kohya", "{stem}"))},
            # diffusers reads string_to_param['*'] (loaders/textual_inversion.py:218-221): only a `*` placeholder
            "diffusers": Conditional("{dtoken}", "one `*` token, with token=",
                                     lambda emb: [t.name for t in emb.tokens] == ["*"], TOKEN_ARGUMENT),
        },
    )
]
