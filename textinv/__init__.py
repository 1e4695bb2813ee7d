"""textinv: textual inversion for Stable Diffusion.

Everything the CLI does is a plain function: `load_embedding`, `save_embedding`, `merge_embeddings`,
`load_pipeline`, `add_embeddings`, `txt2img`, `img2img`, `Session`, `Request`, `fetch_concept`, `build_config` are
re-exported here, and training is `textinv.train.train(config)`. Heavy modules (torch, diffusers) load on first use, so that
`textinv --help` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "Embedding": "embeddings",
    "Token": "embeddings",
    "load_embedding": "embeddings",
    "save_embedding": "embeddings",
    "merge_embeddings": "embeddings",
    "detect_format": "embeddings",
    "describe_embedding": "embeddings",
    "trigger_words": "embeddings",
    "load_pipeline": "models",
    "add_embeddings": "models",
    "load_embeddings": "models",
    "txt2img": "generate",
    "img2img": "generate",
    "Request": "generate",
    "Session": "session",
    "Config": "config",
    "build_config": "config",
    "load_config": "config",
    "fetch_concept": "concepts",
    "search_concepts": "concept_search",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f"textinv.{_API[name]}"), name)
    raise AttributeError(f"module 'textinv' has no attribute {name!r}")
