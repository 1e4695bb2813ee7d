"""Model families and the text-encoder widths that tell them apart: the one table that names the family of an
embedding (from its vectors), of a model (from its files, `models.peek`, or once loaded, `models.loading`), the
packaged training config for each, and so the families a config's `model.family` may name; and whether an
embedding fits a model, by their widths. No torch here: the command line and the config read it before anything
heavy is imported.

Widths come in the pipeline's order of text encoders: (768, None) is one encoder (SD1.x), (768, 1280) SDXL's two,
(768, 1280, 4096) SD3's three (CLIP-L, OpenCLIP-bigG, T5-XXL) and (768, 4096) Flux.1's CLIP-L and T5-XXL. SD3's T5
encoder is optional (`text_encoder_3=None`): such a model's widths are (768, 1280, None), still SD3.
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
    Family("SD3", (768, 1280, 4096), "sd3-finetune"),  # SD3/3.5: CLIP-L + OpenCLIP-bigG + T5-XXL
    Family("Flux.1", (768, 4096), "flux-finetune"),  # CLIP-L (pooled vector only) + T5-XXL
    Family("textinv toy", (64,)),  # the small model textinv ships (--model toy)
)
Widths = tuple[int | None, ...]  # a model's or a token's encoder widths: (w, None) for one encoder, see above
_BY_WIDTHS = {f.widths: f.name for f in FAMILIES}
# The packaged config for each family that has one: what `model.family` may name, and what `train` picks.
CONFIG_FOR = {f.name: f.config for f in FAMILIES if f.config}
T5_FAMILIES = ("SD3", "Flux.1")  # the families with a T5-XXL encoder


def _present(widths) -> tuple[int, ...]:
    return tuple(w for w in widths if w is not None)


def _without_t5(widths) -> bool:
    """Three encoders with the third (T5) absent: an SD3 model loaded without `text_encoder_3`."""
    return len(widths) == 3 and widths[2] is None and None not in widths[:2]


def family_for(*widths: int | None) -> str:
    """SD1.x / SD2.x / SDXL / SD3 / Flux.1 / textinv toy from the text encoders' widths, else 'unknown (dims ...)'."""
    if _without_t5(widths):
        three = [f.name for f in FAMILIES if len(f.widths) == 3 and f.widths[:2] == tuple(widths[:2])]
        return three[0] if three else f"unknown (dims {widths[0]}+{widths[1]}+?)"
    present = _present(widths)
    if present in _BY_WIDTHS:
        return _BY_WIDTHS[present]
    if len(present) == 1:
        return f"unknown (dim {present[0]})"
    return f"unknown (dims {'+'.join(map(str, present))})"


def describe(*widths: int | None) -> str:
    """The widths and their family, for messages: 'SD1.x (768-dim)', 'SDXL (768+1280-dim)', 'SD3 without its T5
    encoder (768+1280-dim)', '96-dim (no known family)'."""
    family = family_for(*widths)
    dims = "+".join(map(str, _present(widths))) + "-dim"
    if family.startswith("unknown"):
        return f"{dims} (no known family)"
    return f"{family} without its T5 encoder ({dims})" if _without_t5(widths) else f"{family} ({dims})"


def fits(widths: Widths, dims: Widths) -> bool:
    """Whether a placeholder `widths` wide fits a model whose encoders are `dims` wide: the same widths, or an SD3
    embedding on an SD3 model without its T5 encoder (the t5 part then goes unused)."""
    if _without_t5(dims):
        present = _present(widths)
        return len(present) == 3 and present[:2] == tuple(dims[:2])
    return _present(widths) == _present(dims)


def check_fits(path: str | Path, placeholder: str, widths: Widths, dims: Widths) -> None:
    """ModelError when a placeholder `widths` wide (`Token.widths`, from the file at `path`) does not fit a model
    whose text encoders are `dims` wide (`encoder_widths` of a loaded one, `peek.text_encoder_dims` of one not
    loaded yet)."""
    if fits(widths, dims):
        return
    model_family = family_for(*dims)
    raise ModelError(
        f"{Path(path).name}: embedding {placeholder} is {describe(*widths)} but the model is "
        f"{describe(*dims)}; use an embedding trained for "
        f"{'this model' if model_family.startswith('unknown') else model_family}, or a model of the embedding's "
        "family with --model"
    )
