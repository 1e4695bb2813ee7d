"""sha256 of the files textinv names in metadata, and the short hashes AUTOMATIC1111 shows for them.

AUTOMATIC1111 (stable-diffusion-webui 1.x) hashes the whole file with sha256 (modules/hashes.py,
`calculate_sha256`, read in 1 MiB blocks, cached until the file's mtime changes) and shows the first 10 hex
digits of a checkpoint's (modules/sd_models.py, `CheckpointInfo`: `shorthash = sha256[0:10]`, the `Model hash`
of its infotext, which civitai matches) and the first 12 of an embedding's (modules/textual_inversion/
textual_inversion.py, `Embedding.set_hash`: `shorthash = hash[0:12]`, the `TI hashes` of its infotext).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

MODEL_HASH_DIGITS = 10
EMBEDDING_HASH_DIGITS = 12


def sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes (of a folder: of its files' bytes, in sorted order), computed once while
    each file keeps its size and mtime."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return _sha256(tuple((str(f.resolve()), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()]))


def model_hash(path: str | Path) -> str:
    """The short model hash AUTOMATIC1111 shows (and civitai matches) for a checkpoint file."""
    return sha256(path)[:MODEL_HASH_DIGITS]


def embedding_hash(path: str | Path) -> str:
    """The short hash AUTOMATIC1111 writes for an embedding file in `TI hashes`."""
    return sha256(path)[:EMBEDDING_HASH_DIGITS]


@functools.lru_cache(maxsize=64)
def _sha256(files: tuple[tuple[str, int, int], ...]) -> str:  # (path, size, mtime): a changed file rehashes
    h = hashlib.sha256()
    for name, _, _ in files:
        with open(name, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
