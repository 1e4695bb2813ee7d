"""Model families and the text-encoder widths that tell them apart: the one table that names the family of an
embedding (from its vectors), of a model (from its files, `models.peek`, or once loaded, `models.loading`), the
packaged training config for each, and so the families a config's `model.family` may name; and whether an
embedding fits a model, by their widths. No torch here: the command line and the config read it before anything
heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textinv.errors import ModelError


@dataclass(frozen=True)
class Family:
    name: str
    widths: tuple[int, ...]  # the token-embedding width of each text encoder, in the pipeline's order
    config: str | None = None  # the packaged training config written for it (textinv/configs/<config>.yaml)


FAMILIES = (
    Family("SD1.x", (768,), "v1-finetune"),  # CLIP ViT-L/14
    Family("SD2.x", (1024,), "v2-finetune"),  # OpenCLIP ViT-H/14
    Family("SDXL", (768, 1280), "sdxl-finetune"),  # CLIP ViT-L/14 + OpenCLIP ViT-bigG/14
    Family("textinv toy", (64,)),  # the small model textinv ships (--model toy)
)
Widths = tuple[int, int | None]  # a text encoder's width and the second one's (SDXL), else None
_BY_WIDTHS = {f.widths: f.name for f in FAMILIES}
# The packaged config for each family that has one: what `model.family` may name, and what `train` picks.
CONFIG_FOR = {f.name: f.config for f in FAMILIES if f.config}


def family_for(dim: int, dim_2: int | None = None) -> str:
    """SD1.x / SD2.x / SDXL / textinv toy from the text encoders' widths, or 'unknown (dim N)'."""
    widths = (dim,) if dim_2 is None else (dim, dim_2)
    if widths in _BY_WIDTHS:
        return _BY_WIDTHS[widths]
    return f"unknown (dims {dim}+{dim_2})" if dim_2 is not None else f"unknown (dim {dim})"


def describe(dim: int, dim_2: int | None = None) -> str:
    """The widths and their family, for messages: 'SD1.x (768-dim)', 'SDXL (768+1280-dim)', '96-dim (no known
    family)'."""
    family = family_for(dim, dim_2)
    dims = f"{dim}+{dim_2}-dim" if dim_2 else f"{dim}-dim"
    return f"{dims} (no known family)" if family.startswith("unknown") else f"{family} ({dims})"


def check_fits(path: str | Path, placeholder: str, widths: Widths, dims: Widths) -> None:
    """ModelError when a placeholder `widths` wide (`Token.widths`, from the file at `path`) does not fit a model
    whose text encoders are `dims` wide (`encoder_widths` of a loaded one, `peek.text_encoder_dims` of one not
    loaded yet)."""
    if tuple(widths) == tuple(dims):
        return
    model_family = family_for(*dims)
    raise ModelError(
        f"{Path(path).name}: embedding {placeholder} is {describe(*widths)} but the model is "
        f"{describe(*dims)}; use an embedding trained for "
        f"{'this model' if model_family.startswith('unknown') else model_family}, or a model of the embedding's "
        "family with --model"
    )
