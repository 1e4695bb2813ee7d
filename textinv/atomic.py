"""Atomic file writes: write a temporary file beside the target, fsync it, rename it over the target.

A reader (or a process killed mid-write) never sees half a file: the target is the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# AUTOMATIC1111's webui refuses a torch zip holding any record but data.pkl, version and data/N under the
# archive's top folder (modules/safe.py `allowed_zip_names_re`, read at commits 2d2edc11 and 05933840; v1.10.1
# adds byteorder and .data/serialization_id), calling it possibly malicious. torch 2.x also writes
# .format_version, .storage_alignment, byteorder and .data/serialization_id; torch reads a zip without them as
# it reads one from torch 1.x (little-endian, no mmap alignment needed).
A1111_ZIP_RECORD = re.compile(r"^[^/]+/(data/\d+|version|data\.pkl)$")


def torch_save(obj: object, path: str | Path) -> None:
    """torch.save, atomically, into a zip with only the records every reader (AUTOMATIC1111's included) allows."""
    import io
    import zipfile

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as dst:
            for info in src.infolist():
                if A1111_ZIP_RECORD.match(info.filename):
                    dst.writestr(_stored(info.filename, src.getinfo(info.filename)), src.read(info))

    atomic_write(path, write)


def _stored(name: str, like):
    """A zip entry for `name`, uncompressed, with a fixed date so that equal objects give equal bytes."""
    import zipfile

    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = like.external_attr
    return info
