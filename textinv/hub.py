"""Talking to the Hugging Face hub: its settings, read from the environment at call time, and a small client.

huggingface_hub reads `HF_HUB_OFFLINE` and the cache location once, at import; a long-lived process or a test
that changes the environment afterwards is honoured here. Model loading and `fetch` both ask through this module.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from textinv.errors import ConceptError
from textinv.reporting import SILENT, Reporter

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


@dataclass
class Client:
    """The calls textinv makes to the hub, with huggingface_hub's settings as the environment says now."""

    endpoint: str
    cache_dir: str
    offline: bool
    token: str | None  # explicit token; None lets huggingface_hub find HF_TOKEN or the saved login
    reporter: Reporter

    @classmethod
    def from_env(cls, token: str | None, reporter: Reporter = SILENT) -> Client:
        from huggingface_hub import constants

        endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
        return cls(endpoint, cache_dir(), offline(), token, reporter)

    def has_token(self) -> bool:
        from huggingface_hub import get_token

        return bool(self.token or get_token())

    def api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token)

    def download(self, repo_id: str, filename: str, *, force: bool = False) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(
            hf_hub_download(
                repo_id,
                filename,
                cache_dir=self.cache_dir,
                endpoint=self.endpoint,
                token=self.token,
                local_files_only=self.offline,
                force_download=force and not self.offline,
                tqdm_class=_reporting_tqdm(self.reporter, filename),
            )
        )


def check_reachable(hub: Client) -> None:
    """Fail in a second when the hub's host cannot be reached at all: huggingface_hub's listing retries a
    connection error five times with back-off (23 s) first. Skipped behind a proxy, which only it knows how to use."""
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return
    url = urlparse(hub.endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        raise ConceptError(
            f"cannot reach the hub at {hub.endpoint} ({e.strerror or type(e).__name__}); check your connection"
        ) from None


@contextlib.contextmanager
def quiet_logging() -> Iterator[None]:
    """huggingface_hub logs each retry as a warning; every failure becomes one ConceptError line instead."""
    import huggingface_hub.hf_api  # noqa: F401  (configures its loggers on import: set our level after that)

    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _reporting_tqdm(reporter: Reporter, filename: str):
    """A tqdm class for huggingface_hub's downloads that draws nothing and tells `reporter` instead, as task
    "download" counted in bytes."""
    from tqdm import tqdm

    class _Reporting(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            kwargs["file"] = io.StringIO()  # tqdm's own drawing goes nowhere
            super().__init__(*args, **kwargs)
            reporter.start("download", int(self.total or 0), note=f"downloading {filename}")

        def update(self, n=1):
            out = super().update(n)
            reporter.advance("download", int(self.n))
            return out

        def close(self):
            if not self.disable:
                reporter.finish("download")
            super().close()

    return _Reporting


def network_errors() -> tuple[type[BaseException], ...]:
    """The transport errors of whichever HTTP library this huggingface_hub uses (httpx2, httpx or requests)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, attr in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "ConnectionError"),
    ):
        try:
            errors.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def hub_exceptions() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError

    return (HfHubHTTPError, OSError, *network_errors())
