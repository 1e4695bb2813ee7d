"""Search the sd-concepts-library (or any hub author) for concepts by name: `textinv fetch --search WORD`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from textinv.concepts.fetch import SD_CONCEPTS, hub_error
from textinv.errors import ConceptError
from textinv.formats.diffusers import TOKEN_FILE, TYPE_FILE, read_word_file
from textinv.hub import Client, check_reachable, hub_exceptions, quiet_logging


@dataclass
class ConceptInfo:
    """One search hit."""

    name: str
    repo_id: str
    token: str | None
    concept_type: str | None
    likes: int | None
    downloads: int | None


def search_concepts(
    word: str, limit: int = 20, *, author: str = SD_CONCEPTS, token: str | None = None
) -> list[ConceptInfo]:
    """Concepts of `author` whose name contains `word`, most downloaded first, with their token and type."""
    if limit < 1:
        raise ConceptError(f"--limit must be at least 1, not {limit}")
    hub = Client.from_env(token)
    if hub.offline:
        raise ConceptError("searching needs the hub, and HF_HUB_OFFLINE is set; unset it to search")
    from huggingface_hub.errors import OfflineModeIsEnabled

    check_reachable(hub)
    try:
        with quiet_logging():
            models = list(hub.api().list_models(author=author, search=word, sort="downloads", limit=limit))
    except OfflineModeIsEnabled:
        raise ConceptError("searching needs the hub, and HF_HUB_OFFLINE is set; unset it to search") from None
    except hub_exceptions() as e:
        raise hub_error(e, f"{author} (search {word!r})", hub) from None

    def describe(model) -> ConceptInfo:
        repo_id = model.id
        return ConceptInfo(
            name=repo_id.split("/", 1)[1] if repo_id.startswith(f"{SD_CONCEPTS}/") else repo_id,
            repo_id=repo_id,
            token=_small_file(hub, repo_id, TOKEN_FILE),
            concept_type=(_small_file(hub, repo_id, TYPE_FILE) or "").lower() or None,
            likes=model.likes,
            downloads=model.downloads,
        )

    # The hub's listing has no token or type; each is a small file of its own, so read them side by side.
    with quiet_logging(), ThreadPoolExecutor(max_workers=min(8, max(1, len(models)))) as pool:
        return list(pool.map(describe, models))


def _small_file(hub: Client, repo_id: str, filename: str) -> str | None:
    try:
        return read_word_file(hub.download(repo_id, filename)) or None
    except hub_exceptions():  # a missing or unreadable file only leaves a blank in the listing
        return None
