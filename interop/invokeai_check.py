"""Run InvokeAI's own embedding probe and loader on every file `train` and `convert --for invokeai` write.

Run by `make interop`, in a separate venv with the `invokeai` package from PyPI (it pins its own diffusers and
transformers). Prints one line per file and exits 1 if InvokeAI refuses or misreads any of them.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from textinv.errors import EmbeddingFormatError
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import load_embedding, save_embedding
from textinv.formats.registry import FORMATS, WRITABLE

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
    """None if InvokeAI's probe takes `path` as a textual inversion of the right base only, named after the file's
    stem (its prompt word is `<stem>`), and its loader reads the vectors textinv wrote; else what went wrong.

    The probe step is each TI config class's `from_model_on_disk` with the common fields its
    `ModelConfigFactory.build_common_fields` adds (the factory module itself imports torchvision, whose PyPI build
    does not load with the CPU torch this venv uses)."""
    from invokeai.backend.model_manager.configs import textual_inversion as ti
    from invokeai.backend.model_manager.model_on_disk import ModelOnDisk
    from invokeai.backend.textual_inversion import TextualInversionModelRaw

    ours = load_embedding(path)
    mod = ModelOnDisk(path)
    fields = {"path": path.as_posix(), "source": path.as_posix(), "source_type": "path", "name": mod.name,
              "hash": mod.hash(), "key": "interop", "description": None, "file_size": mod.size()}
    matched = {}
    kind = "Folder" if path.is_dir() else "File"  # a concept folder: TI_Folder_*, which reads learned_embeds.bin
    configs = [(f, getattr(ti, f"TI_{kind}_{b}_Config")) for f, b in (("SD1.x", "SD1"), ("SD2.x", "SD2"), ("SDXL", "SDXL"))]
    for family, config in configs:
        try:
            matched[family] = config.from_model_on_disk(mod, dict(fields))
        except Exception as e:  # NotAMatchError: this base's probe refused the file
            matched[family] = e
    if not hasattr(matched[ours.family], "base") or any(hasattr(v, "base") for k, v in matched.items() if k != ours.family):
        return "probe: " + "; ".join(f"{k}: {str(v).splitlines()[0]}" for k, v in matched.items())
    if matched[ours.family].name != path.stem:
        return f"probe named it {matched[ours.family].name!r}, not {path.stem!r}"
    raw = TextualInversionModelRaw.from_checkpoint(path / "learned_embeds.bin" if path.is_dir() else path)
    tok = ours.tokens[0]
    # InvokeAI keeps SDXL's clip_g in `embedding` and clip_l in `embedding_2`
    pairs = [(raw.embedding, tok.vectors_2), (raw.embedding_2, tok.vectors)] if ours.is_sdxl else [(raw.embedding, tok.vectors)]
    for got, expected in pairs:
        if got is None or got.shape != expected.shape or not torch.equal(got.float(), expected):
            shape = None if got is None else list(got.shape)
            return f"loader read shape {shape}, expected {list(expected.shape)} (or different values)"
    return None


def refused_files(folder: Path) -> list[Path]:
    """Layouts the README says InvokeAI refuses (`{tok: [n, dim]}` safetensors): the check must fail on them."""
    return [save_embedding(Embedding([Token("<cat>", torch.randn(n, 768))]), folder / f"control-{n}.safetensors",
                           format="diffusers-safetensors") for n in (1, 4)]


def record_files(folder: Path) -> list[tuple[Path, bool]]:
    """Every layout textinv writes, SD1.x/SD2.x/SDXL, one and four vectors, each with whether its format record
    (and so the README's table) says InvokeAI loads it."""
    out = []
    for name in WRITABLE:
        for widths in ((768, None), (1024, None), (768, 1280)):
            for n in (1, 4):
                emb = Embedding([Token("<cat>", torch.randn(n, widths[0]),
                                       torch.randn(n, widths[1]) if widths[1] else None)])
                stem = f"rec-{name}-{'+'.join(str(w) for w in widths if w)}-{n}".replace("+", "_")
                try:
                    path = save_embedding(emb, folder / f"{stem}{FORMATS[name].extension}", format=name)
                except EmbeddingFormatError:  # a layout that cannot hold it (an SDXL PNG, ...)
                    continue
                out.append((path, "invokeai" in FORMATS[name].usage(path, emb)))
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        failed = 0
        for path, claimed in record_files(Path(tmp)):  # the records' claims, both ways
            problem = check(path)
            failed += (problem is None) != claimed
            verdict = "loads" if problem is None else f"refused ({problem})"
            print(f"{'ok  ' if (problem is None) == claimed else 'FAIL'} {path.name}: record says "
                  f"{'loads' if claimed else 'refused'}, InvokeAI {verdict}")
        for path in written_files(Path(tmp)):
            problem = check(path)
            failed += problem is not None
            print(f"{'FAIL' if problem else 'ok  '} {path.name}" + (f": {problem}" if problem else ""))
        for path in refused_files(Path(tmp)):  # controls: a check that passes these would prove nothing
            problem = check(path)
            failed += problem is None
            print(f"{'ok  ' if problem else 'FAIL'} {path.name} refused as documented: {problem}")
        print(f"{failed} of InvokeAI's checks failed")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
