"""AUTOMATIC1111's embedding inside a PNG: the `.pt` dict as base64 JSON in an `sd-ti-embedding` text chunk.

The webui's prompt word for one is the `name` it carries, not the file's stem.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from textinv.atomic import atomic_write
from textinv.formats.a1111 import A1111_STAR_ID
from textinv.formats.common import (
    PT_META_KEY,
    Source,
    name_or_none,
    pt_metadata,
    require_single_encoder,
    single_token,
)
from textinv.formats.embedding import Embedding
from textinv.formats.paper import from_string_to_param
from textinv.formats.record import Format


def _recognise(data, metadata, source: Source) -> bool:
    return source.container == "png" and isinstance(data, dict) and isinstance(data.get("string_to_param"), dict)


def _read(data, metadata, source: Source) -> Embedding:
    names = [name_or_none(data.get("name")) or source.path.stem] if len(data["string_to_param"]) == 1 else None
    return from_string_to_param(data, names or [str(k) for k in data["string_to_param"]], source, "a1111-png")


def _write(emb: Embedding, path: Path) -> None:
    from PIL import Image, ImageDraw, PngImagePlugin

    require_single_encoder(emb, "PNG")
    tok = single_token(emb, "PNG")
    data = {
        "string_to_token": {"*": A1111_STAR_ID},
        "string_to_param": {"*": {"TORCHTENSOR": tok.vectors.tolist()}},
        "name": tok.name,
        "step": emb.step or 0,
        "sd_checkpoint": emb.base_model_hash,
        "sd_checkpoint_name": emb.base_model,
        **({PT_META_KEY: meta} if (meta := pt_metadata(emb)) else {}),
    }
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(data).encode()).decode())
    image = Image.new("RGB", (512, 128), (24, 24, 32))
    ImageDraw.Draw(image).text((16, 16), f"{tok.name}\n{tok.num_vectors}v {emb.step or 0}s", fill=(230, 230, 230))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


FORMATS = [
    Format(
        name="a1111-png",
        description="AUTOMATIC1111 embedding inside a PNG",
        recognise=_recognise,
        read=_read,
        write=_write,
        extension=".png",
        loads_in={"a1111": "{token}"},
    )
]
