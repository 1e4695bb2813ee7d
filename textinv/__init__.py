"""textinv: textual inversion for Stable Diffusion.

Everything the CLI does is a plain function: `load_embedding`, `save_embedding`, `merge_embeddings`,
`load_pipeline`, `add_embeddings`, `txt2img`, `img2img`, `Session`, `Request`, `fetch_concept`, `build_config` are
re-exported here, as are `train`, `evaluate`, `write_report` and `Run` (a run folder). Heavy modules (torch,
diffusers) load on first use, so that `textinv --help` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "Embedding": "formats.embedding",
    "Token": "formats.embedding",
    "load_embedding": "formats.files",
    "save_embedding": "formats.files",
    "detect_format": "formats.files",
    "trigger_words": "formats.files",
    "merge_embeddings": "formats.edit",
    "describe_embedding": "formats.edit",
    "load_pipeline": "models.loading",
    "add_embeddings": "models.embeddings",
    "load_embeddings": "models.embeddings",
    "txt2img": "generation.sampling",
    "img2img": "generation.sampling",
    "Request": "generation.sampling",
    "Session": "generation.session",
    "Config": "config",
    "build_config": "config",
    "load_config": "config",
    "Run": "runs",
    "train": "training.loop",
    "evaluate": "evaluation.evaluate",
    "write_report": "evaluation.report",
    "fetch_concept": "concepts.fetch",
    "search_concepts": "concepts.search",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f"textinv.{_API[name]}"), name)
    raise AttributeError(f"module 'textinv' has no attribute {name!r}")
