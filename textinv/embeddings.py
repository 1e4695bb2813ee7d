"""Textual-inversion embeddings: the in-memory type, and reading, writing, merging and describing them.

Every format wraps the same thing, a few rows of a text encoder's token-embedding matrix per placeholder. The
formats are records in `textinv.formats`; files are recognised by their content (never by extension alone), read
without running pickle code (`textinv.safe_pickle`), normalised to float32 [n_vectors, dim] on the CPU, and
written atomically. The README's format table is derived from the same records.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from textinv.errors import EmbeddingFormatError, OutputExistsError, TextinvError
from textinv.formats import WRITE_NAMES

WRITE_FORMATS = WRITE_NAMES  # what `save_embedding(format=...)` takes, besides the shorthands and tool names
FAMILIES = {768: "SD1.x", 1024: "SD2.x", 64: "textinv toy"}  # 64: the small model textinv ships (--model toy)


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
        return family_for(self.tokens[0].dim, self.tokens[0].vectors_2.shape[1] if self.is_sdxl else None)

    @property
    def is_sdxl(self) -> bool:
        return self.tokens[0].vectors_2 is not None

    def token(self, name: str) -> Token:
        for tok in self.tokens:
            if tok.name == name:
                return tok
        raise KeyError(name)


def family_for(dim: int, dim_2: int | None = None) -> str:
    if dim_2 is not None:
        return "SDXL" if (dim, dim_2) == (768, 1280) else f"unknown (dims {dim}+{dim_2})"
    return FAMILIES.get(dim, f"unknown (dim {dim})")


# --- reading and writing (the formats themselves live in textinv/formats/) ------------------------------------


def load_embedding(path: str | Path) -> Embedding:
    """Read any supported format (detected by content), safely: no pickle code is ever run."""
    from textinv.formats.registry import read_embedding

    return read_embedding(Path(path))


def detect_format(path: str | Path) -> str:
    """The format name of a readable file, e.g. 'a1111-pt' or 'diffusers-bin'."""
    return load_embedding(path).source_format or "unknown"


def save_embedding(
    emb: Embedding, path: str | Path, *, format: str | None = None, force: bool = False, for_tool: str | None = None
) -> Path:
    """Write atomically. `format` is a format name ('a1111-pt', 'kohya', ...), an extension shorthand ('pt',
    'bin', 'safetensors', 'png') or a tool name; `for_tool` names the tool the file is for (see `formats.TOOLS`);
    with neither, the extension decides."""
    from textinv.formats.registry import resolve, write_embedding

    path = Path(path)
    fmt = resolve(for_tool or format, emb, path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force to overwrite it")
    return write_embedding(emb, path, fmt)


def output_format(emb: Embedding, path: str | Path, *, format: str | None = None, for_tool: str | None = None):
    """The `formats.Format` record `save_embedding` would write, e.g. for its extension or trigger words."""
    from textinv.formats.registry import resolve

    return resolve(for_tool or format, emb, Path(path))


def with_extension(emb: Embedding, path: str | Path, *, format: str | None = None, for_tool: str | None = None) -> Path:
    """`path` with the extension its format needs added when it has none; a conflicting one is refused, since a
    tool would read, say, a torch zip named .safetensors as safetensors."""
    path = Path(path)
    if not (format or for_tool):
        return path
    ext = output_format(emb, path, format=format, for_tool=for_tool).extension
    if not path.suffix and ext:
        return path.with_suffix(ext)
    if ext and path.suffix.lower() != ext:
        choice = f"--for {for_tool}" if for_tool else f"--to {format}"
        raise EmbeddingFormatError(f"{choice} writes a {ext} file; name the output {path.with_suffix(ext).name}")
    return path


def split_outputs(emb: Embedding, path: str | Path) -> list[tuple[Embedding, Path]]:
    """One single-token Embedding per token, each with its own output path `<stem>-<token><ext>` (AUTOMATIC1111,
    InvokeAI, ComfyUI and kohya take the stem as the trigger word)."""
    path = Path(path)
    parts = []
    for i, tok in enumerate(emb.tokens, 1):  # '<my-cat>' -> OUT-my-cat.ext; a name with no letters -> OUT-token2.ext
        safe = re.sub(r"[^A-Za-z0-9_-]+", "", tok.name).strip("-_") or f"token{i}"
        part = Embedding([tok], name=emb.name, step=emb.step, base_model=emb.base_model,
                         base_model_hash=emb.base_model_hash,
                         init_words={k: v for k, v in emb.init_words.items() if k == tok.name}, extra=dict(emb.extra))
        parts.append((part, path.with_name(f"{path.stem}-{safe}{path.suffix}")))
    return parts


@dataclass
class Written:
    """One file `write_files` wrote: where, in which format, what it holds, and tool -> its trigger word there."""

    path: Path
    format: str
    embedding: Embedding
    triggers: dict[str, str]


def write_files(
    emb: Embedding, path: str | Path, *, format: str | None = None, for_tool: str | None = None,
    split: bool = False, force: bool = False,
) -> list[Written]:
    """What `convert` and `merge` write: `emb` to `path` (the extension added if it has none), or with `split` one
    file per token; each with the words that trigger it in the tools that load it."""
    choice = {"format": format, "for_tool": for_tool}
    written = []
    for part, dst in split_outputs(emb, path) if split else [(emb, Path(path))]:
        dst = save_embedding(part, with_extension(part, dst, **choice), force=force, **choice)
        fmt = output_format(part, dst, **choice)
        written.append(Written(dst, fmt.name, part, fmt.triggers(dst, part)))
    return written


def trigger_words(emb: Embedding, path: str | Path, *, format: str | None = None, for_tool: str | None = None):
    """tool -> the prompt word that triggers `emb` once written to `path` (as `save_embedding` would)."""
    return output_format(emb, path, format=format, for_tool=for_tool).triggers(Path(path), emb)


# --- merging, renaming, describing --------------------------------------------------------------------------


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
            tokens.append(Token(name, tok.vectors, tok.vectors_2, tok.source_dtype))
            if tok.name in emb.init_words:
                init_words[name] = emb.init_words[tok.name]
    def shared(values: set):  # what all the files agree on travels; a disagreement is dropped
        return values.pop() if len(values) == 1 else None

    return Embedding(
        tokens,
        name=first.name if len(embs) == 1 else None,
        step=first.step if len(embs) == 1 else None,
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
    if tok.name in emb.init_words:
        emb.init_words[new_name] = emb.init_words.pop(tok.name)
    tok.name = new_name
    return emb


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
