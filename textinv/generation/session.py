"""A generation session: a model loaded once with its embeddings, turning one request after another into PNGs.

`textinv generate`, `img2img` and each `dream>` line are one `Session.make` call; a script does the same:

    session = Session.open("toy", embeddings=["my_cat.pt"])
    made = session.make(Request("a photo of *", n=4, seed=7), "outputs")

Each image is written (atomically, with its parameters) as soon as its batch is made, so an interrupted run keeps
what it finished; the contact sheet comes last.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from textinv.atomic import atomic_write, check_writable
from textinv.errors import DataError
from textinv.generation import sampling
from textinv.generation.metadata import png_info
from textinv.generation.sampling import GeneratedImage, Request
from textinv.models.embeddings import add_embeddings, check_prompt, load_embeddings
from textinv.models.loading import load_pipeline, resolve_device, resolve_dtype
from textinv.models.source import DEFAULT_MODEL
from textinv.pictures import contact_sheet
from textinv.reporting import SILENT, Reporter


@dataclass
class Made:
    """What one request wrote: a PNG per image, in order, and the contact sheet (None for one image or --no-grid)."""

    images: list[GeneratedImage]
    paths: list[Path]
    grid: Path | None


class Session:
    """A loaded pipeline (`pipe`, with `pipe.textinv` saying what it is) and the embeddings added to it."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe

    @classmethod
    def open(
        cls,
        model: str | Path | None = None,
        *,
        model_config: str | Path | None = None,
        device: str | None = None,
        dtype: str | None = None,
        embeddings: list[str | Path] = (),
        tokens: list[str] | None = None,
        reporter: Reporter = SILENT,
        on_load: Callable[[], None] | None = None,
    ) -> Session:
        """Read the embeddings, check that they fit the model from its config alone, then load the model
        (`on_load()` called just before: the command line quiets other libraries and says what loads)."""
        from textinv.models.peek import check_fit

        embs = load_embeddings(list(embeddings), tokens=tokens)
        check_fit(model, model_config, embs)
        resolve_dtype(dtype, resolve_device(device))  # an unknown --device or --dtype, said before the load
        if on_load is not None:
            on_load()
        reporter.message(f"loading model {model or os.environ.get('TEXTINV_MODEL') or DEFAULT_MODEL}")
        pipe = load_pipeline(model, model_config=model_config, device=device, dtype=dtype)
        for note in pipe.textinv.warnings:
            reporter.message(f"warning: {note}")
        added = add_embeddings(pipe, embs)
        reporter.message(
            f"model {pipe.textinv.name}: {pipe.textinv.family}, on {pipe.device} "
            f"({str(pipe.dtype).removeprefix('torch.')})" + (f"; placeholders: {' '.join(added)}" if added else "")
        )
        return cls(pipe)

    def add_embeddings(self, specs: list[str | Path], tokens: list[str] | None = None) -> list[str]:
        """Load more embeddings into the session; returns the placeholders added."""
        return add_embeddings(self.pipe, load_embeddings(list(specs), tokens=tokens))

    def make(
        self, request: Request, out_dir: str | Path, *, grid: bool | None = None, reporter: Reporter = SILENT
    ) -> Made:
        """Make, save and report the images of one request: `NNNNNN.SEED.png` per image as it is made, then
        `NNNNNN.SEED.grid.png` (a contact sheet) when there are several and `grid` is not False."""
        request.check(read_init=False)
        out_dir = Path(out_dir)
        check_out_dir(out_dir)
        for warning in check_prompt(self.pipe, f"{request.prompt} {request.negative}"):
            reporter.message(f"warning: {warning}")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"--out {out_dir}: cannot create the folder ({e.strerror or e})") from None
        start = next_index(out_dir)
        images, paths = [], []
        for batch in sampling.make(self.pipe, request, reporter=reporter):
            for made in batch:
                paths.append(_save(made.image, made.params, out_dir / f"{start + len(images):06d}.{made.seed}.png"))
                images.append(made)
        sheet = None
        if (grid if grid is not None else len(images) > 1) and images:
            name = f"{start:06d}.{images[0].seed}.grid.png"
            sheet = _save(contact_sheet([m.image for m in images]), images[0].params, out_dir / name)
        return Made(images=images, paths=paths, grid=sheet)


def check_out_dir(out_dir: str | Path) -> None:
    """DataError when images cannot be written into `out_dir` (it need not exist yet): checked before the model
    loads, so a wrong --out costs a second."""
    check_writable(out_dir, "--out")


def next_index(out_dir: Path) -> int:
    """The number after the highest `NNNNNN.` file name in `out_dir` (InvokeAI's numbering)."""
    numbers = [int(m.group(1)) for p in out_dir.glob("*.png") if (m := re.match(r"^(\d{6})\.", p.name))]
    return max(numbers, default=0) + 1


def _save(image, params: sampling.GenerationParams, path: Path) -> Path:
    """Write a PNG with its parameters atomically: a full disk or a kill leaves no partial file, one error line."""
    try:
        atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=png_info(params)))
    except OSError as e:
        raise DataError(f"--out {path.parent}: cannot write {path.name} ({e.strerror or e})") from None
    return path
