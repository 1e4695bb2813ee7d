"""The one file sniffer, and the container readers, which check every size a file declares before reading it.

An embedding is kilobytes. A container can declare far more than its size on disk (a zip record that inflates,
a safetensors header whose offsets point past the end), so the declared sizes are bounded before any bytes are
decoded: a decompression bomb is refused in the time and memory it takes to read its directory.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import zipfile
from pathlib import Path

from textinv.errors import EmbeddingFormatError, TextinvError, first_line

MAX_FILE_BYTES = 64 * 2**20  # the largest real embedding seen is 1.4 MiB; a 64 MiB one is not an embedding
MAX_DECODED_BYTES = 64 * 2**20  # what the records of one file may declare, all together
MAX_RECORDS = 4096
MAX_SAFETENSORS_HEADER = 2**20
MAX_PNG_DEPTH = 8  # nesting of the JSON in an embedding PNG's text chunk

CONTAINERS = ("png", "safetensors", "torch-zip", "torch-legacy")


def detect_container(path: str | Path) -> str | None:
    """'png' | 'safetensors' | 'torch-zip' | 'torch-legacy' from the first bytes, or None for anything else."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in (2, 3, 4, 5):
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return None


def read_container(path: Path, container: str):
    """(data, metadata) from a file of a known container, every declared size checked first."""
    readers = {"png": _read_png, "safetensors": _read_safetensors, "torch-zip": _read_zip, "torch-legacy": _read_legacy}
    return readers[container](path)


def _too_large(what: str) -> EmbeddingFormatError:
    return EmbeddingFormatError(f"{what}; embeddings are kilobytes, so this file is refused unread")


def check_zip(path: Path, limit: int = MAX_DECODED_BYTES) -> None:
    """Refuse a zip whose records declare more than `limit` (what an embedding could hold), or are compressed
    (torch never compresses; a compressed record is how a small file inflates to gigabytes)."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:  # (a zip version from the future)
        raise EmbeddingFormatError(f"the file is truncated or corrupt ({first_line(e, 160)}); download it again") from None
    if len(infos) > MAX_RECORDS:
        raise _too_large(f"the zip holds {len(infos)} records")
    packed = [i for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise EmbeddingFormatError(
            f"the zip record {packed[0].filename!r} is compressed, which torch never writes; "
            "this is not a torch file (it may be a decompression bomb)"
        )
    declared = sum(i.file_size for i in infos)
    if declared > limit:
        raise _too_large(f"its zip records declare {declared / 2**20:.0f} MiB")


def _read_zip(path: Path):
    check_zip(path)
    return _read_pickle(path)


def _read_legacy(path: Path):
    return _read_pickle(path)


def _read_pickle(path: Path):
    from textinv.safe_pickle import load_torch_file, too_much

    try:
        return load_torch_file(path), {}
    except TextinvError:
        raise
    except (RuntimeError, MemoryError) as e:  # a storage the file declares that torch could not even allocate
        asked = re.search(r"allocate (\d+) bytes", str(e))
        if isinstance(e, MemoryError) or asked:
            raise too_much(int(asked[1]) if asked else None, "storage") from None
        raise EmbeddingFormatError(f"the file is truncated or corrupt ({first_line(e, 160)}); download it again") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise EmbeddingFormatError(f"the file is truncated or corrupt ({first_line(e, 160)}); download it again") from None
    except Exception as e:  # a malformed pickle can raise almost anything
        raise EmbeddingFormatError(f"not a readable torch file ({type(e).__name__}: {first_line(e, 160)})") from None


def check_safetensors(path: Path) -> dict:
    """The parsed header, after checking that its length and every tensor's offsets and shape fit the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_SAFETENSORS_HEADER:
            raise _too_large(f"its safetensors header declares {header_len} bytes")
        if 8 + header_len > size:
            raise EmbeddingFormatError("the safetensors file is truncated; download it again")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise EmbeddingFormatError(f"the safetensors header is corrupt ({first_line(e, 160)})") from None
    if not isinstance(header, dict):
        raise EmbeddingFormatError("the safetensors header is corrupt (not a JSON object)")
    data_bytes = size - 8 - header_len
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise EmbeddingFormatError(f"the safetensors header is corrupt (tensor {name!r} has no offsets)")
        if not (isinstance(shape, list) and all(isinstance(d, int) and 0 <= d <= MAX_DECODED_BYTES for d in shape)):
            raise EmbeddingFormatError(f"the safetensors header is corrupt (tensor {name!r} has shape {shape})")
        if not 0 <= offsets[0] <= offsets[1] <= data_bytes:
            raise EmbeddingFormatError(
                f"the safetensors file is truncated or corrupt (tensor {name!r} lies past its end); download it again"
            )
    return header


def _read_safetensors(path: Path):
    from safetensors import safe_open

    check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except Exception as e:
        raise EmbeddingFormatError(f"the safetensors file is truncated or corrupt ({first_line(e, 160)})") from None


def _read_png(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or im.info)
    except Exception as e:
        raise EmbeddingFormatError(f"unreadable PNG ({first_line(e, 160)})") from None
    payload = text.get("sd-ti-embedding")
    if payload is None:
        raise EmbeddingFormatError(
            "this PNG carries no embedding (no 'sd-ti-embedding' text chunk); "
            "embeddings hidden only in the pixels are not supported"
        )
    try:
        data = json.loads(base64.b64decode(payload))
    except (ValueError, TypeError, RecursionError) as e:
        raise EmbeddingFormatError(f"the PNG's embedding chunk is corrupt ({first_line(e, 160)})") from None
    return _decode_torchtensors(data, 0), {}


def _decode_torchtensors(obj, depth: int):
    """AUTOMATIC1111's JSON, with each tensor as {"TORCHTENSOR": nested lists}; ragged, nested-too-deep or
    non-numeric lists are refused in one line."""
    import torch

    if depth > MAX_PNG_DEPTH:
        raise EmbeddingFormatError(f"the PNG's embedding chunk is nested more than {MAX_PNG_DEPTH} levels deep")
    if isinstance(obj, dict):
        if set(obj) == {"TORCHTENSOR"}:
            try:
                return torch.tensor(obj["TORCHTENSOR"], dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError) as e:
                raise EmbeddingFormatError(
                    f"the PNG's embedding tensor is not a rectangular list of numbers ({first_line(e, 120)})"
                ) from None
        return {k: _decode_torchtensors(v, depth + 1) for k, v in obj.items()}
    return obj
