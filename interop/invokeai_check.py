"""Run InvokeAI's own embedding probe and loader on every file `train` and `convert --for invokeai` write.

Run by `make interop`, in a separate venv with the `invokeai` package from PyPI (it pins its own diffusers and
transformers). Prints one line per file and exits 1 if InvokeAI refuses or misreads any of them.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from textinv.embeddings import Embedding, Token, load_embedding, save_embedding

REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-embeddings"


def written_files(folder: Path) -> list[Path]:
    """What `train` writes by default (log.formats [pt]) and what `convert --for invokeai` writes."""
    files = []
    for dim in (768, 1024):
        for n in (1, 4):
            emb = Embedding([Token("<cat>", torch.randn(n, dim))], name="cat", step=100)
            files.append(save_embedding(emb, folder / f"train-{dim}-{n}.pt"))  # as train's final save
            files.append(save_embedding(emb, folder / f"for-invokeai-{dim}-{n}.pt", for_tool="invokeai"))
    if REAL.is_dir():
        for src in sorted(REAL.iterdir()):
            try:
                emb = load_embedding(src)
            except Exception:  # the T5 file and PROVENANCE.md
                continue
            if len(emb.tokens) == 1:
                files.append(save_embedding(emb, folder / f"real-{src.stem}.pt", for_tool="invokeai"))
    return files


def check(path: Path) -> str | None:
    """None if InvokeAI probes and loads `path` with the vectors textinv wrote, else what went wrong."""
    from invokeai.backend.model_manager.configs.textual_inversion import (
        TI_File_SD1_Config,
        TI_File_SD2_Config,
        TI_File_SDXL_Config,
    )
    from invokeai.backend.model_manager.model_on_disk import ModelOnDisk
    from invokeai.backend.textual_inversion import TextualInversionModelRaw

    ours = load_embedding(path)
    config = {"SD1.x": TI_File_SD1_Config, "SD2.x": TI_File_SD2_Config, "SDXL": TI_File_SDXL_Config}[ours.family]
    try:
        config.from_model_on_disk(ModelOnDisk(path), {})
    except Exception as e:
        return f"probe refused it: {e}"
    raw = TextualInversionModelRaw.from_checkpoint(path)
    expected = ours.tokens[0].vectors_2 if ours.is_sdxl else ours.tokens[0].vectors
    got = raw.embedding_2 if ours.is_sdxl else raw.embedding
    got = got.float().reshape(expected.shape) if got.numel() == expected.numel() else got
    if got.shape != expected.shape or not torch.equal(got, expected):
        return f"loader read shape {list(got.shape)}, expected {list(expected.shape)} (or different values)"
    return None


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        failed = 0
        for path in written_files(Path(tmp)):
            problem = check(path)
            failed += problem is not None
            print(f"{'FAIL' if problem else 'ok  '} {path.name}" + (f": {problem}" if problem else ""))
        print(f"{failed} of InvokeAI's checks failed")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
