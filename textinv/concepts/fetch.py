"""Concepts from the Hugging Face hub (the sd-concepts-library and any repo holding an embedding): search, fetch
into the embeddings folder, and find what was fetched.

Everything goes through huggingface_hub's own client, so its cache, resumable downloads, `HF_TOKEN`,
`HF_ENDPOINT` and `HF_HUB_OFFLINE` all apply. The environment is read at call time (huggingface_hub reads it
once, at import), so a long-lived process or a test that changes it is honoured too.

A fetched concept is two files in the embeddings folder: the embedding (`cat-toy.bin`) and a sidecar
(`cat-toy.concept.json`) recording the repo, the commit it came from, the token and the concept type. The
sidecar is what lets a re-fetch be skipped when the hub has not changed, and what `find_local` reads.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from textinv.atomic import atomic_write
from textinv.errors import ConceptError, EmbeddingFormatError, OutputExistsError, first_line
from textinv.formats import TENSOR_SUFFIXES
from textinv.formats.diffusers import TOKEN_FILE, TYPE_FILE, apply_concept_files
from textinv.formats.embedding import Embedding
from textinv.formats.files import load_embedding, save_embedding
from textinv.hub import Client, hub_exceptions, network_errors, quiet_logging
from textinv.reporting import SILENT, Reporter

SD_CONCEPTS = "sd-concepts-library"
# What diffusers writes now, then what the 2022 sd-concepts notebooks wrote (anchors-detailed.md F4/F5).
STANDARD_FILES = ("learned_embeds.safetensors", "learned_embeds.bin")
SIDECAR = ".concept.json"
FETCH_FORMATS = ("pt", "bin", "safetensors")
# Hub repo names: letters, digits, '-', '_', '.'; no '--' or '..' (the hub refuses them too), at most 96 chars.
_REPO_PART = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass(frozen=True)
class ConceptRef:
    """A concept as the user named it: the hub repo and the name it gets in the embeddings folder."""

    repo_id: str
    local_name: str  # `cat-toy` for sd-concepts-library/cat-toy, `owner--name` for any other repo


@dataclass
class FetchResult:
    """What `fetch_concept` did."""

    name: str
    repo_id: str
    revision: str | None  # the hub commit the files came from
    token: str
    concept_type: str | None
    path: Path
    source_file: str  # the embedding's file name in the repo
    num_vectors: int
    dim: int
    family: str
    skipped: bool = False  # already in the folder and unchanged on the hub
    from_cache: bool = False  # offline: read from the huggingface_hub cache

    @property
    def example_prompt(self) -> str:
        if self.concept_type == "style":
            return f"a painting in the style of {self.token}"
        return f"a photo of {self.token}"

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["example_prompt"] = self.example_prompt
        return d


# --- names and paths -----------------------------------------------------------------------------------------


def parse_concept_name(name_or_repo: str) -> ConceptRef:
    """`cat-toy` -> sd-concepts-library/cat-toy; `owner/name` as given; anything that could be a path is refused."""
    raw = name_or_repo.strip()
    parts = raw.split("/")
    looks_like_path = (
        not raw
        or raw.startswith(("/", "~", "."))
        or "\\" in raw
        or os.path.isabs(raw)
        or any(p in ("", ".", "..") for p in parts)
    )
    if looks_like_path or len(parts) > 2 or not all(_REPO_PART.match(p) for p in parts):
        raise ConceptError(
            f"{name_or_repo!r} is not a concept name or hub repo id"
            + (" (it would write outside the embeddings folder)" if looks_like_path or len(parts) > 2 else "")
            + "; use a name like cat-toy or a repo id like owner/name"
        )
    if len(parts) == 1:
        return ConceptRef(f"{SD_CONCEPTS}/{raw}", raw)
    owner, name = parts
    return ConceptRef(raw, name if owner == SD_CONCEPTS else f"{owner}--{name}")


def _inside(folder: Path, path: Path) -> Path:
    """`path`, after checking it resolves inside `folder` (names are validated already; this is the backstop)."""
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ConceptError(
            f"{path} would be written outside the embeddings folder {folder}; nothing was written"
        )
    return path


def _sidecar_path(folder: Path, local_name: str) -> Path:
    return folder / f"{local_name}{SIDECAR}"


def _read_sidecar(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("file"), str) else None


def find_local(name: str, folder: Path) -> Path | None:
    """The embedding file of a concept already fetched into `folder`, by concept name, repo id or token."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    try:
        ref: ConceptRef | None = parse_concept_name(name)
    except ConceptError:
        ref = None
    if ref is not None:
        side = _read_sidecar(_sidecar_path(folder, ref.local_name))
        if side is not None and (folder / Path(side["file"]).name).is_file():
            return folder / Path(side["file"]).name
        for suffix in TENSOR_SUFFIXES:
            if (folder / f"{ref.local_name}{suffix}").is_file():
                return folder / f"{ref.local_name}{suffix}"
    # `cat-toy` fetched from another owner, or the token itself (`<cat-toy>`)
    for side_path in sorted(folder.glob(f"*{SIDECAR}")):
        side = _read_sidecar(side_path)
        if side is None or name not in (side.get("name"), side.get("repo_id"), side.get("token")):
            continue
        path = folder / Path(side["file"]).name
        if path.is_file():
            return path
    return None


# --- the hub -------------------------------------------------------------------------------------------------


def _cached_snapshot(hub: Client, repo_id: str) -> Path | None:
    """The cached folder of the repo's `main` if it holds an embedding; never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            repo_id,
            cache_dir=hub.cache_dir,
            local_files_only=True,
            allow_patterns=[TOKEN_FILE, TYPE_FILE, *(f"*{s}" for s in TENSOR_SUFFIXES)],
        )
    except IncompleteSnapshotError as e:  # we download only the files we need; what is there is enough
        folder = e.snapshot_path
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    if not folder or not Path(folder).is_dir():
        return None
    # huggingface_hub creates the snapshot folder before a download, so one that failed leaves it empty
    names = [p.name for p in Path(folder).iterdir() if p.is_file()]
    return Path(folder) if pick_embedding_file(names) else None


def _short_sha(sha: str | None) -> str:
    return sha[:7] if sha else "unknown"


def _cache_note(hub: Client, repo_id: str) -> str:
    snap = _cached_snapshot(hub, repo_id)
    if snap is None:
        return f"no cached copy of {repo_id} exists, so it cannot be used offline either"
    return f"a cached copy of {repo_id} exists (revision {_short_sha(snap.name)}): rerun with HF_HUB_OFFLINE=1 to use it"


def hub_error(e: BaseException, repo_id: str, hub: Client, what: str = "") -> ConceptError:
    """One line that says what went wrong talking to the hub and what to do about it."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    url = f"{hub.endpoint}/{repo_id}"
    # hf_hub_download wraps the failed HEAD request of a file it does not have cached (a ValueError when forced)
    if isinstance(e, (LocalEntryNotFoundError, ValueError)) and e.__cause__ is not None:
        e = e.__cause__
    status = getattr(getattr(e, "response", None), "status_code", None)
    where = f" while downloading {what}" if what else ""
    if isinstance(e, GatedRepoError):
        if hub.has_token():
            return ConceptError(
                f"{repo_id} is gated and your token has no access yet: accept its terms at {url} "
                "with the account of HF_TOKEN, then fetch again"
            )
        return ConceptError(
            f"{repo_id} is gated: accept its terms at {url}, then set HF_TOKEN to a token of that account"
        )
    if isinstance(e, RepositoryNotFoundError):
        if status == 401 and not hub.has_token():
            return ConceptError(
                f"{repo_id} was not found on {hub.endpoint}, or it is private: check the name "
                "(textinv fetch --search WORD), or set HF_TOKEN if it is private"
            )
        if status == 401:
            return ConceptError(
                f"{repo_id} was not found on {hub.endpoint}, or your token (HF_TOKEN) cannot see it: "
                "check the name (textinv fetch --search WORD) and the token"
            )
        return ConceptError(
            f"no concept {repo_id} on {hub.endpoint}: check the name (textinv fetch --search WORD)"
        )
    if isinstance(e, (RemoteEntryNotFoundError, RevisionNotFoundError)):
        return ConceptError(f"{repo_id} changed on the hub{where} (a file went missing); fetch again")
    if isinstance(e, HfHubHTTPError) and status is not None and status >= 500:
        return ConceptError(
            f"the hub ({hub.endpoint}) answered {status} (a server error){where or ' for ' + repo_id}; "
            f"nothing was saved; try again later ({_cache_note(hub, repo_id)})"
        )
    if isinstance(e, HfHubHTTPError) and status in (401, 403):
        return ConceptError(
            f"the hub refused access to {repo_id} ({status}): set HF_TOKEN to a token that can read it"
        )
    if isinstance(e, HfHubHTTPError):
        return ConceptError(f"the hub answered {status}{where} for {repo_id}: {first_line(e, 200)}")
    if isinstance(e, network_errors()) and what:
        return ConceptError(
            f"the connection to {hub.endpoint} dropped while downloading {what}; nothing was saved; "
            "fetch again (huggingface_hub resumes the download)"
        )
    if isinstance(e, network_errors()):
        return ConceptError(
            f"cannot reach the hub at {hub.endpoint} ({type(e).__name__}); check your connection; "
            f"{_cache_note(hub, repo_id)}"
        )
    if isinstance(e, OSError) and "Consistency check failed" in str(e):
        return ConceptError(
            f"the download of {what or repo_id} was cut short (the size does not match); nothing was saved; "
            "fetch again"
        )
    return ConceptError(f"could not fetch {repo_id}{where}: {type(e).__name__}: {first_line(e, 200)}")


# --- fetch ---------------------------------------------------------------------------------------------------


def pick_embedding_file(filenames: list[str]) -> str | None:
    """learned_embeds.safetensors, then learned_embeds.bin, then the only top-level embedding file there is."""
    top = [f for f in filenames if "/" not in f]
    for name in STANDARD_FILES:
        if name in top:
            return name
    others = sorted(f for f in top if f.endswith(TENSOR_SUFFIXES) and not f.startswith("."))
    # A repo with several weight files (a full model, a LoRA) is not one concept; refuse to guess.
    return others[0] if len(others) == 1 else None


def _no_embedding_error(repo_id: str, filenames: list[str]) -> ConceptError:
    shown = (
        ", ".join(sorted(filenames)[:8]) + (", ..." if len(filenames) > 8 else "")
        if filenames
        else "no files"
    )
    return ConceptError(
        f"{repo_id} holds no textual-inversion embedding (looked for learned_embeds.safetensors, "
        f"learned_embeds.bin or a single .bin/.safetensors/.pt file; it has {shown})"
    )


def fetch_concept(
    name_or_repo: str,
    *,
    out_dir: Path = Path("embeddings"),
    to: str | None = None,
    force: bool = False,
    token: str | None = None,
    reporter: Reporter = SILENT,
) -> FetchResult:
    """Download a concept from the hub, check it with the safe reader, and save it into `out_dir`.

    Args:
        name_or_repo: `cat-toy` (taken as sd-concepts-library/cat-toy) or any hub repo id.
        to: 'pt' | 'bin' | 'safetensors' to convert on the way; default keeps the repo's format.
        force: fetch and overwrite even when the folder already holds this revision.
        token: a hub token; default is HF_TOKEN or the saved `hf auth login`.
        reporter: told of each download's progress (task "download", in bytes).
    """
    ref = parse_concept_name(name_or_repo)
    if to is not None and to not in FETCH_FORMATS:
        raise ConceptError(f"cannot save a concept as {to!r}; use --to {'|'.join(FETCH_FORMATS)}")
    with quiet_logging():
        return _fetch(ref, Path(out_dir), to, force, Client.from_env(token, reporter))


def _fetch(ref: ConceptRef, out_dir: Path, to: str | None, force: bool, hub: Client) -> FetchResult:
    sidecar = _inside(out_dir, _sidecar_path(out_dir, ref.local_name))
    previous = _read_sidecar(sidecar)

    revision, files, from_cache = _locate(ref.repo_id, hub)
    emb_file = pick_embedding_file(list(files))
    if emb_file is None:
        raise _no_embedding_error(ref.repo_id, list(files))
    fmt = to or _format_of(emb_file)
    target = _inside(out_dir, out_dir / f"{ref.local_name}.{fmt}")

    if previous is not None and not force and previous.get("revision") == revision and revision is not None:
        kept = out_dir / Path(previous["file"]).name
        if kept == target and kept.is_file():
            return _result_from_sidecar(previous, kept, from_cache)

    emb = _download_and_read(ref.repo_id, emb_file, files, hub, from_cache=from_cache, force=force)
    emb.name = ref.local_name
    emb.extra.update({"hub_repo": ref.repo_id, "hub_revision": revision or "", "hub_file": emb_file})
    ours = previous is not None and out_dir / Path(previous["file"]).name == target
    if target.exists() and not (force or ours):
        raise OutputExistsError(
            f"{target} already exists and was not fetched from {ref.repo_id}; pass --force to replace it, "
            "or --out DIR to fetch into another folder"
        )
    save_embedding(emb, target, format=fmt, force=True)
    result = FetchResult(
        name=ref.local_name,
        repo_id=ref.repo_id,
        revision=revision,
        token=emb.tokens[0].name,
        concept_type=emb.extra.get("concept_type"),
        path=target,
        source_file=emb_file,
        num_vectors=emb.tokens[0].num_vectors,
        dim=emb.tokens[0].dim,
        family=emb.family,
        from_cache=from_cache,
    )
    _write_sidecar(sidecar, result, [t.name for t in emb.tokens])
    if previous is not None:  # fetched before in another format: that file is ours and now stale
        old = out_dir / Path(previous["file"]).name
        if old != target and old.is_file():
            old.unlink()
    return result


def _locate(repo_id: str, hub: Client) -> tuple[str | None, dict[str, Path | None], bool]:
    """(commit sha, {file name: cached path or None}, from the cache?) for the repo's main branch."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    if not hub.offline:
        try:
            info = hub.api().model_info(repo_id)
        except OfflineModeIsEnabled:  # huggingface_hub was imported with HF_HUB_OFFLINE=1
            hub.offline = True
        except hub_exceptions() as e:
            raise hub_error(e, repo_id, hub) from None
        else:
            names = [s.rfilename for s in (info.siblings or [])]
            return info.sha, dict.fromkeys(names), False
    snap = _cached_snapshot(hub, repo_id)
    if snap is None:
        raise ConceptError(
            f"HF_HUB_OFFLINE is set and {repo_id} is not in the Hugging Face cache ({hub.cache_dir}); "
            "unset HF_HUB_OFFLINE to download it"
        )
    files = {p.name: p for p in sorted(snap.iterdir()) if p.is_file()}
    return snap.name, files, True


def _download_and_read(
    repo_id: str, emb_file: str, files: dict[str, Path | None], hub: Client, *, from_cache: bool, force: bool
) -> Embedding:
    def get(filename: str) -> Path | None:
        if filename not in files:
            return None
        if from_cache:
            return files[filename]
        try:
            return hub.download(repo_id, filename, force=force)
        except (*hub_exceptions(), ValueError) as e:
            raise hub_error(e, repo_id, hub, what=f"{repo_id}/{filename}") from None

    emb_path = get(emb_file)
    token_path, type_path = get(TOKEN_FILE), get(TYPE_FILE)
    assert emb_path is not None
    try:
        emb = load_embedding(emb_path)
    except EmbeddingFormatError as e:
        reason = str(e).split(": ", 1)[-1] if str(e).startswith(str(emb_path)) else str(e)
        raise ConceptError(
            f"{repo_id}/{emb_file} is not a usable embedding: {reason}; nothing was saved"
        ) from e
    return apply_concept_files(emb, token_path, type_path)


def _format_of(filename: str) -> str:
    suffix = Path(filename).suffix.lstrip(".")
    return suffix if suffix in FETCH_FORMATS else "safetensors"


def _write_sidecar(path: Path, result: FetchResult, tokens: list[str]) -> None:
    data = {
        "name": result.name,
        "repo_id": result.repo_id,
        "revision": result.revision,
        "file": result.path.name,
        "source_file": result.source_file,
        "token": result.token,
        "tokens": tokens,
        "concept_type": result.concept_type,
        "num_vectors": result.num_vectors,
        "dim": result.dim,
        "family": result.family,
    }
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _result_from_sidecar(side: dict, path: Path, from_cache: bool) -> FetchResult:
    return FetchResult(
        name=side.get("name") or path.stem,
        repo_id=side["repo_id"],
        revision=side.get("revision"),
        token=side.get("token") or "",
        concept_type=side.get("concept_type"),
        path=path,
        source_file=side.get("source_file") or "",
        num_vectors=int(side.get("num_vectors") or 0),
        dim=int(side.get("dim") or 0),
        family=side.get("family") or "",
        skipped=True,
        from_cache=from_cache,
    )
