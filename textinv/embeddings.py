"""Textual-inversion embeddings: one in-memory type, and a reader and writer for each file format in the wild.

IMPLEMENTATION IN PROGRESS: the types and signatures below are final; the bodies land shortly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

FAMILIES = {768: "SD1.x", 1024: "SD2.x", 1280: "SDXL (clip_g only)"}


@dataclass
class Token:
    """One placeholder and its learned vectors.

    `vectors` is float32 [n_vectors, dim] for the text encoder (SDXL: `clip_l`, 768); `vectors_2` is SDXL's
    second encoder (`clip_g`, 1280), or None for SD1.x/SD2.x.
    """

    name: str
    vectors: torch.Tensor
    vectors_2: torch.Tensor | None = None

    @property
    def num_vectors(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]


@dataclass
class Embedding:
    """An ordered set of placeholder tokens plus what is known of where they came from."""

    tokens: list[Token]
    name: str | None = None  # A1111's `name`, the concept name, or the file stem
    step: int | None = None  # training steps
    base_model: str | None = None  # checkpoint name or hub id it was trained on
    base_model_hash: str | None = None
    init_words: dict[str, str] = field(default_factory=dict)  # placeholder -> init word
    source_format: str | None = None  # a FORMATS key, for what it was read from
    extra: dict[str, str] = field(default_factory=dict)  # any other string metadata (concept type, ...)

    @property
    def family(self) -> str:
        """SD1.x / SD2.x / SDXL from the vector widths, or 'unknown (dim N)'."""
        ...

    def token(self, name: str) -> Token: ...


def load_embedding(path: str | Path) -> Embedding:
    """Read any supported format (detected by content), safely: no pickle code is ever run."""
    ...


def save_embedding(emb: Embedding, path: str | Path, *, format: str | None = None, force: bool = False) -> Path:
    """Write atomically; `format` is 'pt' | 'bin' | 'safetensors' | 'kohya' | 'png', else from the extension."""
    ...


def merge_embeddings(embs: list[Embedding], *, on_conflict: str = "error") -> Embedding:
    """'error' | 'rename' (* -> *_2) | 'skip'; different widths cannot be merged."""
    ...
