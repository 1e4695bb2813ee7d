"""The one sha256 helper and the short hashes AUTOMATIC1111 shows: checked against hashlib itself."""

from __future__ import annotations

import hashlib
import os

from textinv import hashing


def test_a1111_model_hash_is_sha256_first_ten(tmp_path):
    f = tmp_path / "m.safetensors"
    f.write_bytes(b"weights" * 1000)
    assert hashing.model_hash(f) == hashlib.sha256(b"weights" * 1000).hexdigest()[:10]


def test_embedding_hash_is_sha256_first_twelve_and_the_full_hash_is_hashlibs(tmp_path):
    data = bytes(range(256)) * 9000  # over 2 MiB: more than one 1 MiB block
    f = tmp_path / "cat.pt"
    f.write_bytes(data)
    assert hashing.sha256(f) == hashlib.sha256(data).hexdigest()
    assert hashing.embedding_hash(str(f)) == hashlib.sha256(data).hexdigest()[:12]


def test_a_folder_hashes_its_files_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"second")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.bin").write_bytes(b"third")
    (tmp_path / "a.bin").write_bytes(b"first")
    assert hashing.sha256(tmp_path) == hashlib.sha256(b"firstsecondthird").hexdigest()


def test_a_changed_file_is_hashed_again(tmp_path):
    f = tmp_path / "m.ckpt"
    f.write_bytes(b"one")
    assert hashing.model_hash(f) == hashlib.sha256(b"one").hexdigest()[:10]
    f.write_bytes(b"two, longer")
    assert hashing.model_hash(f) == hashlib.sha256(b"two, longer").hexdigest()[:10]
    f.write_bytes(b"six")  # same size as before: the mtime tells the change
    stat = f.stat()
    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert hashing.model_hash(f) == hashlib.sha256(b"six").hexdigest()[:10]
