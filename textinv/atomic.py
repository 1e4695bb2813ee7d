"""Atomic file writes: write a temporary file beside the target, fsync it, rename it over the target.

A reader (or a process killed mid-write) never sees half a file: the target is the old file or the new one.
The temporary file's name carries the writer's process id (`.NAME.PID-XXXX.tmp`), so one left behind by a
killed process is recognised and removed the next time anything is written into that folder. Written files get
the mode a plain `open()` would give them (the existing file's, else 0666 minus the umask), not mkstemp's 0600.
An operating-system error (disk full, read-only folder, a path component that is a file) becomes one
`WriteError` line naming the path, and nothing is left half-written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from textinv.errors import WriteError

_TEMP_NAME = re.compile(r"^\..+\.(\d+)-[a-z0-9_]+\.tmp$")
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_REASONS = {
    errno.ENOSPC: "the disk is full; free some space and run again",
    errno.EDQUOT: "the disk quota is used up; free some space and run again",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.EACCES: "permission denied; write to a folder you own",
    errno.EPERM: "permission denied; write to a folder you own",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "the name is too long",
}


def write_error(path: Path, e: OSError) -> WriteError:
    """One line naming the path and what went wrong, for an OSError met while writing it."""
    reason = _REASONS.get(e.errno) or (e.strerror or str(e))
    return WriteError(f"cannot write {path}: {reason}", e.errno, e.strerror or str(e))


def check_writable(path: str | Path, flag: str, *, folder: bool = True) -> None:
    """DataError, before anything expensive runs, when `path` (a folder, or with `folder` False a file; it need
    not exist yet) cannot be written: a file where a folder goes, a folder where the file goes, or the nearest
    existing folder above it read-only. `flag` names the option in the message (`--out`)."""
    from textinv.errors import DataError

    path = Path(path)
    if not folder and path.is_dir():
        raise DataError(f"{flag} {path}: it is a folder; pass a file name")
    start = path if folder else path.parent
    existing = next((p for p in (start, *start.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise DataError(f"{flag} {path}: {existing} is a file, not a folder; pass a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{flag} {path}: {existing} is not writable; pass a folder you can write to")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path` in one step."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _plain_open_mode(path))
        os.replace(tmp_path, path)
    except OSError as e:
        raise write_error(path, e) from None
    except Exception as e:  # a writer that wraps the OSError in its own error (safetensors: "(os error 28)")
        code = _RUST_OS_ERROR.search(str(e))
        if code is not None:
            raise write_error(path, OSError(int(code.group(1)), str(e))) from None
        if _disk_full(path.parent):
            raise write_error(path, OSError(errno.ENOSPC, "disk full")) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files in `folder` whose writing process is gone (killed mid-write); returns them."""
    removed = []
    for entry in os.scandir(folder):
        m = _TEMP_NAME.match(entry.name)
        if m is None or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _disk_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 16


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # ours: another write of this process may be under way (a thread)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists, owned by someone else; or not a pid at all, so leave the file be
    return True


def _plain_open_mode(path: Path) -> int:
    """The mode `open(path, "w")` would leave: the existing file's, else 0666 minus the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


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
