"""The Hugging Face hub settings, read from the environment at call time.

huggingface_hub reads `HF_HUB_OFFLINE` and the cache location once, at import; a long-lived process or a test
that changes the environment afterwards is honoured here. Both model loading and `fetch` ask through this module.
"""

from __future__ import annotations

import os

_TRUE = ("1", "ON", "YES", "TRUE")


def offline() -> bool:
    """HF_HUB_OFFLINE as the environment says now; huggingface_hub's own reading when it is unset."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in _TRUE
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> str:
    """The hub cache: HF_HUB_CACHE (or its old name), else HF_HOME/hub, else huggingface_hub's default."""
    env = os.environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return os.path.expanduser(cache)
    if env.get("HF_HOME"):
        return os.path.join(os.path.expanduser(env["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)
