"""Merging, renaming, selecting and describing embeddings: what `merge`, `convert --token` and `inspect` do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from textinv.errors import EmbeddingFormatError, TextinvError
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import load_embedding


def merge_embeddings(
    embs: list[Embedding],
    *,
    on_conflict: str = "error",
    ask: Callable[[str, str], str] | None = None,
) -> Embedding:
    """Merge several embeddings into one; a repeated placeholder is an 'error', 'rename'd (* -> *_2), 'skip'ped
    or, with 'ask', renamed to what `ask(placeholder, source)` returns. Different widths cannot be merged."""
    if on_conflict not in ("error", "rename", "skip", "ask"):
        raise TextinvError(f"unknown --on-conflict {on_conflict!r}; use error, rename, skip or ask")
    if not embs:
        raise TextinvError("nothing to merge: give at least one embedding file")
    first = embs[0]
    tokens: list[Token] = []
    origin: dict[str, str] = {}
    init_words: dict[str, str] = {}
    for emb in embs:
        if emb.family != first.family:
            raise EmbeddingFormatError(
                f"cannot merge {first.path or 'the first file'} ({first.family}) with "
                f"{emb.path or 'another file'} ({emb.family}): their vectors have different widths"
            )
        for tok in emb.tokens:
            name = tok.name
            if name in origin:
                if on_conflict == "error":
                    raise EmbeddingFormatError(
                        f"placeholder {name!r} is in both {origin[name]} and {emb.path or 'another file'}; "
                        "use --on-conflict rename|skip, or rename one with `textinv convert --token`"
                    )
                if on_conflict == "skip":
                    continue
                name = _free_name(name, origin) if on_conflict == "rename" else ask(name, emb.path or "")
                if name in origin or not name.strip():
                    raise EmbeddingFormatError(f"placeholder {name!r} is empty or already taken")
            origin[name] = emb.path or "another file"
            tokens.append(Token(name, tok.vectors, tok.vectors_2, tok.source_dtype, tok.t5))
            if tok.name in emb.init_words:
                init_words[name] = emb.init_words[tok.name]
    def shared(values: set):  # what all the files agree on travels; a disagreement is dropped
        return values.pop() if len(values) == 1 else None

    return Embedding(
        tokens,
        name=shared({e.name for e in embs}),  # one file, or files of one run: its name and step stay
        step=shared({e.step for e in embs}),
        base_model=shared({e.base_model for e in embs}),
        base_model_hash=shared({e.base_model_hash for e in embs}),
        init_words=init_words,
        source_format="merged",
    )


def _free_name(name: str, taken: dict) -> str:
    k = 2
    while f"{name}_{k}" in taken:
        k += 1
    return f"{name}_{k}"


def rename_token(emb: Embedding, new_name: str, old_name: str | None = None) -> Embedding:
    """Rename one token (the only one, or `old_name`) in place, keeping its init word."""
    if old_name is None:
        if len(emb.tokens) != 1:
            names = ", ".join(t.name for t in emb.tokens)
            raise TextinvError(f"the embedding has {len(emb.tokens)} tokens ({names}); say which to rename")
        tok = emb.tokens[0]
    else:
        try:
            tok = emb.token(old_name)
        except KeyError:
            raise TextinvError(f"no token {old_name!r} in the embedding") from None
    if not new_name.strip():
        raise TextinvError(f"the new name for {tok.name!r} is empty; give a word such as <my-cat>")
    if new_name != tok.name and new_name in [t.name for t in emb.tokens]:
        raise TextinvError(f"the embedding already has a token {new_name!r}; renaming {tok.name!r} to it would "
                           "leave two tokens of one name: pick another name")
    if tok.name in emb.init_words:
        emb.init_words[new_name] = emb.init_words.pop(tok.name)
    tok.name = new_name
    return emb


def rename_or_pick(emb: Embedding, token: str) -> Embedding:
    """`convert --token`: OLD=NEW renames token OLD; the name of one of several tokens keeps only that one; any
    other word renames the only token (an embedding of several tokens asks which)."""
    if "=" in token:
        old, new = token.split("=", 1)
        return rename_token(emb, new, old)
    if len(emb.tokens) > 1 and token in [t.name for t in emb.tokens]:
        return select_tokens(emb, [token])
    return rename_token(emb, token)


def select_tokens(emb: Embedding, names: list[str]) -> Embedding:
    """Keep only the named tokens."""
    known = [t.name for t in emb.tokens]
    missing = [n for n in names if n not in known]
    if missing:
        raise TextinvError(f"no token {missing[0]!r} in the embedding; it has {', '.join(known)}")
    emb.tokens = [t for t in emb.tokens if t.name in names]
    return emb


def describe_embedding(emb: Embedding) -> dict:
    """What `textinv inspect` shows: format, family and each token's shape and size."""

    def row(t: Token) -> dict:
        d = {
            "name": t.name,
            "vectors": t.num_vectors,
            "dim": t.dim,
            "dtype": t.source_dtype,
            "norm": round(float(t.vectors.norm(dim=1).mean()), 4),
        }
        if t.vectors_2 is not None:
            d["dim_2"] = t.vectors_2.shape[1]
            d["norm_2"] = round(float(t.vectors_2.norm(dim=1).mean()), 4)
        if t.t5 is not None:  # SD3, Flux.1: every part by its key, as the files name them
            d["dim_t5"] = t.t5.shape[1]
            d["norm_t5"] = round(float(t.t5.norm(dim=1).mean()), 4)
            d["parts"] = {key: v.shape[1] for key, v in t.parts.items()}
        return d

    desc = {
        "path": emb.path,
        "format": emb.source_format,
        "family": emb.family,
        "tokens": [row(t) for t in emb.tokens],
        "name": emb.name,
        "step": emb.step,
        "base_model": emb.base_model,
        "base_model_hash": emb.base_model_hash,
        "init_words": emb.init_words or None,
        "extra": emb.extra or None,
    }
    return {k: v for k, v in desc.items() if v is not None}


@dataclass
class Read:
    """One file of `inspect`: its embedding, or the error reading (or fitting) it gave."""

    path: str | Path  # as given
    embedding: Embedding | None
    error: TextinvError | None = None


def read_files(
    paths: Iterable[str | Path], *, fits: Callable[[Path, Embedding], None] | None = None, raise_errors: bool = False
) -> list[Read]:
    """Every file read (and passed to `fits`, e.g. a model-family check told from the model's files), each one's
    error kept so the files after it are still read; `raise_errors` (--debug) raises the first instead."""
    read = []
    for path in paths:
        try:
            emb = load_embedding(path)
            if fits is not None:
                fits(Path(path), emb)
            read.append(Read(path, emb))
        except TextinvError as e:
            if raise_errors:
                raise
            read.append(Read(path, None, e))
    return read


def describe_files(
    paths: Iterable[str | Path], *, check: Callable[[Embedding], dict] | None = None, raise_errors: bool = False
) -> Iterator[dict]:
    """`textinv inspect`, one file at a time: `describe_embedding`, with `check(emb)` (the model check, e.g.
    `models.vocabulary.diagnose` against a loaded model) under "model_check"; a file that cannot be read or checked
    gives {"path", "error"} instead, and the files after it are still described; `raise_errors` (--debug) raises
    instead."""
    return describe_read(read_files(paths, raise_errors=raise_errors), check=check, raise_errors=raise_errors)


def describe_read(
    read: list[Read], *, check: Callable[[Embedding], dict] | None = None, raise_errors: bool = False
) -> Iterator[dict]:
    """`describe_files` of files already read by `read_files`."""
    for r in read:
        error = r.error
        if error is None:
            try:
                desc = describe_embedding(r.embedding)
                if check is not None:
                    desc["model_check"] = check(r.embedding)
            except TextinvError as e:
                if raise_errors:
                    raise
                error = e
        yield {"path": str(r.path), "error": str(error)} if error is not None else desc
