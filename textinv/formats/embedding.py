"""The in-memory embedding: placeholder tokens and their vectors, and the model family their widths say.

Every format wraps the same thing, a few rows of a text encoder's token-embedding matrix per placeholder,
normalised to float32 [n_vectors, dim] on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from textinv.formats.families import family_for


@dataclass
class Token:
    """One placeholder and its learned vectors.

    `vectors` is float32 [n_vectors, dim] for the text encoder (SDXL: `clip_l`, 768); `vectors_2` is SDXL's
    second encoder (`clip_g`, 1280), or None for SD1.x/SD2.x.
    """

    name: str
    vectors: torch.Tensor
    vectors_2: torch.Tensor | None = None
    source_dtype: str = "float32"  # the dtype the file stored (reading always gives float32)

    @property
    def num_vectors(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def widths(self) -> tuple[int, int | None]:
        """(width, the second encoder's width or None): what tells the family."""
        return self.dim, self.vectors_2.shape[1] if self.vectors_2 is not None else None


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
        """SD1.x / SD2.x / SDXL from the vector widths, or 'unknown (dim N)'."""
        return family_for(*self.tokens[0].widths)

    @property
    def is_sdxl(self) -> bool:
        return self.tokens[0].vectors_2 is not None

    def token(self, name: str) -> Token:
        for tok in self.tokens:
            if tok.name == name:
                return tok
        raise KeyError(name)
