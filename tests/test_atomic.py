"""Atomic writes: all or nothing, one line for an OS error, stale temporary files cleaned, umask modes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from textinv import atomic
from textinv.cli import app
from textinv.errors import WriteError
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import save_embedding


def _emb(rows: int = 1) -> Embedding:
    return Embedding(tokens=[Token(name="<x>", vectors=torch.ones(rows, 8))], name="x")


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_injected_disk_full_error_is_one_line_and_leaves_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def half_then_full(tmp: Path) -> None:
        tmp.write_text("half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError) as e:
        atomic.atomic_write(target, half_then_full)
    assert str(e.value) == f"cannot write {target}: the disk is full; free some space and run again"
    assert target.read_text() == "old"
    assert _entries(tmp_path) == ["out.txt"]  # no temporary file left behind


def test_a_path_component_that_is_a_file_is_named(tmp_path):
    (tmp_path / "notes").write_text("a file")
    with pytest.raises(WriteError, match=r"notes/x\.pt: a part of the path is a file, not a folder"):
        atomic.write_text(tmp_path / "notes" / "x.pt", "x")


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (options given by the test) at a fresh folder; skip where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        folder = tmp_path / f"mnt{len(mounted)}"
        folder.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip() or res.returncode})")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("name", ["e.pt", "e.safetensors", "e.bin", "e.png"])
def test_a_full_disk_leaves_no_partial_file(tmpfs, name):
    folder = tmpfs("size=64k")
    with pytest.raises(WriteError, match="the disk is full"):
        save_embedding(_emb(rows=300 * 96), folder / name)  # ~900 KB of float32 into 64 KB
    assert _entries(folder) == []


def test_a_read_only_folder_is_one_line(tmpfs, tmp_path):
    if os.geteuid() != 0:  # permissions stop an ordinary user; root needs a read-only mount
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    else:
        folder = tmpfs("ro,size=64k")
    with pytest.raises(WriteError, match=r"cannot write .*x\.pt: (the file system is read-only|permission denied)"):
        save_embedding(_emb(), folder / "x.pt")
    assert _entries(folder) == []


def test_convert_into_an_unwritable_place_exits_1_with_one_line(tmp_path):
    src = tmp_path / "x.pt"
    save_embedding(_emb(), src)
    (tmp_path / "afile").write_text("")
    res = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "afile" / "y.safetensors")])
    assert res.exit_code == 1
    assert "a part of the path is a file" in res.output and "Traceback" not in res.output


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporary_files_of_a_killed_writer_are_removed_on_the_next_write(tmp_path):
    stale = tmp_path / f".x.pt.{_dead_pid()}-abc123.tmp"
    stale.write_bytes(b"half")
    live = tmp_path / f".y.pt.{os.getppid()}-def456.tmp"  # a writer that is still running: left alone
    live.write_bytes(b"being written")
    user_file = tmp_path / ".notes.tmp"  # not one of ours
    user_file.write_text("mine")
    atomic.write_text(tmp_path / "config.yaml", "a: 1\n")
    assert not stale.exists()
    assert live.exists() and user_file.exists()
    assert (tmp_path / "config.yaml").read_text() == "a: 1\n"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_embedding(_emb(), tmp_path / "x.safetensors")
        atomic.write_text(tmp_path / "config.yaml", "a: 1\n")
    finally:
        os.umask(old)
    assert (tmp_path / "x.safetensors").stat().st_mode & 0o777 == mode
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == mode


def test_overwriting_keeps_the_file_s_mode(tmp_path):
    target = tmp_path / "config.yaml"
    target.write_text("old")
    target.chmod(0o640)
    atomic.write_text(target, "new")
    assert target.stat().st_mode & 0o777 == 0o640 and target.read_text() == "new"
