"""What textinv knows of a pipeline it loaded, kept on the pipeline as `pipe.textinv`: where the model came from,
its family, and the embeddings added to it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LoadedToken:
    placeholder: str
    token_ids: list[int]
    source: str  # the file it came from
    hash: str  # sha256 of the file, first 12 hex digits, as AUTOMATIC1111 writes it
    vectors: torch.Tensor  # [n, dim] float32 as loaded, for checking a reload


@dataclass
class ModelInfo:
    """What was loaded, for metadata and messages; kept on the pipeline as `pipe.textinv`."""

    name: str  # what PNG metadata calls the model: hub id, folder name or file stem
    source: str  # the resolved location
    kind: str  # 'hub' | 'folder' | 'single-file' | 'toy'
    family: str  # 'SD1.x' | 'SD2.x' | 'SDXL' | 'unknown (dim N)'
    warnings: list[str] = field(default_factory=list)
    revision: str | None = None  # for a hub model: the commit of the cached snapshot
    embeddings: dict[str, LoadedToken] = field(default_factory=dict)  # placeholder -> what was loaded
    base_scheduler: object | None = None  # the model's own scheduler, to return to after --scheduler
    variants: dict[str, object] = field(
        default_factory=dict, repr=False
    )  # txt2img/img2img views of one model
