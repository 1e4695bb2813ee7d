"""The in-memory embedding: placeholder tokens and their vectors, and the model family their widths say.

Every format wraps the same thing, a few rows of a text encoder's token-embedding matrix per placeholder,
normalised to float32 [n_vectors, dim] on the CPU. A model with several text encoders has one such block per
encoder (a part), under the key the files use for it: `clip_l` and `clip_g` (SDXL), `clip_l`, `clip_g` and `t5`
(SD3), `clip_l` and `t5` (Flux.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from textinv.formats.families import family_for

# The part keys of a token, in the order the pipelines hold their text encoders (text_encoder, _2, _3).
PART_KEYS = ("clip_l", "clip_g", "t5")


@dataclass
class Token:
    """One placeholder and its learned vectors, one float32 [n_vectors, dim] block per text encoder.

    `vectors` is the first (or only) encoder's: CLIP-L for SDXL, SD3 and Flux.1; `vectors_2` is the OpenCLIP-bigG
    part (`clip_g`: SDXL, SD3); `t5` is the T5-XXL part (SD3, Flux.1).
    """

    name: str
    vectors: torch.Tensor
    vectors_2: torch.Tensor | None = None
    source_dtype: str = "float32"  # the dtype the file stored (reading always gives float32)
    t5: torch.Tensor | None = None

    @classmethod
    def from_parts(cls, name: str, parts: dict[str, torch.Tensor], source_dtype: str = "float32") -> Token:
        """A token from its parts by key: the first part is `vectors` (whatever its key), then `clip_g`, `t5`."""
        first = next(iter(parts.values()))
        return cls(name, first, parts.get("clip_g"), source_dtype, parts.get("t5"))

    @property
    def num_vectors(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def parts(self) -> dict[str, torch.Tensor]:
        """The multi-encoder parts by file key ({clip_l, clip_g} for SDXL, + t5 for SD3, {clip_l, t5} for Flux.1);
        a one-encoder token (SD1.x, SD2.x) is {"clip_l": vectors}."""
        values = (self.vectors, self.vectors_2, self.t5)
        return {key: v for key, v in zip(PART_KEYS, values, strict=True) if v is not None}

    @property
    def widths(self) -> tuple[int | None, ...]:
        """The width of each text encoder's part, in the pipeline's order: what tells the family. (width, the
        second encoder's or None) for SD1.x/SD2.x/SDXL, as `models.loading.encoder_widths` gives a model's."""
        second = self.vectors_2 if self.vectors_2 is not None else self.t5
        widths = (self.dim, second.shape[1] if second is not None else None)
        return widths + (self.t5.shape[1],) if self.vectors_2 is not None and self.t5 is not None else widths


@dataclass
class Embedding:
    """An ordered set of placeholder tokens plus what is known of where they came from."""

    tokens: list[Token]
    name: str | None = None  # A1111's `name`, the concept name, or the file stem
    step: int | None = None  # training steps
    base_model: str | None = None  # checkpoint name or hub id it was trained on
    base_model_hash: str | None = None
    init_words: dict[str, str] = field(default_factory=dict)  # placeholder -> init word
    source_format: str | None = None  # a `textinv.formats.FORMATS` name, for what it was read from
    extra: dict[str, str] = field(default_factory=dict)  # any other string metadata (concept type, ...)
    path: str | None = None  # the file it was read from

    @property
    def family(self) -> str:
        """SD1.x / SD2.x / SDXL / SD3 / Flux.1 from the vector widths, or 'unknown (dim N)'."""
        return family_for(*self.tokens[0].widths)

    @property
    def is_sdxl(self) -> bool:
        """Two CLIP parts and no T5 part: SDXL's layout, at any width."""
        return self.tokens[0].vectors_2 is not None and self.tokens[0].t5 is None

    @property
    def multi_encoder(self) -> bool:
        """One part per text encoder (SDXL, SD3, Flux.1): a file keeps them under their keys."""
        return self.tokens[0].vectors_2 is not None or self.tokens[0].t5 is not None

    @property
    def architecture(self) -> str | None:
        """'SD3' (clip_l + clip_g + t5) or 'Flux.1' (clip_l + t5) from the parts alone, at any width; None for a
        CLIP-only embedding. What the tools that read T5 parts are told apart by."""
        tok = self.tokens[0]
        if tok.t5 is None:
            return None
        return "SD3" if tok.vectors_2 is not None else "Flux.1"

    def token(self, name: str) -> Token:
        for tok in self.tokens:
            if tok.name == name:
                return tok
        raise KeyError(name)
