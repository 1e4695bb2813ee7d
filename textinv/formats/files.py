"""Reading and writing embedding files: formats are recognised by their content (never by extension alone), read
without running pickle code (`textinv.safe_pickle`) and written atomically; the records live in this package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from textinv.errors import EmbeddingFormatError, OutputExistsError, UsageError
from textinv.formats import RENAMED_FOR, WRITE_NAMES
from textinv.formats.embedding import Embedding, Token

WRITE_FORMATS = WRITE_NAMES  # what `save_embedding(format=...)` takes, besides the shorthands and tool names


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
    fmt = resolve(for_tool or format, emb, path, tool=for_tool is not None)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force to overwrite it")
    return write_embedding(emb, path, fmt)


def output_format(emb: Embedding, path: str | Path, *, format: str | None = None, for_tool: str | None = None):
    """The `formats.Format` record `save_embedding` would write, e.g. for its extension or trigger words."""
    from textinv.formats.registry import resolve

    return resolve(for_tool or format, emb, Path(path), tool=for_tool is not None)


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
    """One file `write_files` wrote: where, in which format, what it holds, tool -> its trigger word there, tool ->
    what else that tool needs (code to run), and what was changed on the way so that the tool takes it."""

    path: Path
    format: str
    embedding: Embedding
    triggers: dict[str, str]
    steps: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    loads: str | None = None  # SD3, Flux.1 with --for TOOL: what of it the tool loads ('clip_l and t5xxl')


def write_files(
    emb: Embedding, path: str | Path, *, format: str | None = None, for_tool: str | None = None,
    split: bool = False, force: bool = False,
) -> list[Written]:
    """What `convert` and `merge` write: `emb` to `path` (the extension added if it has none), or with `split` one
    file per token; each with the words that trigger it in the tools that load it."""
    from textinv.formats.registry import parts_loaded

    if format is not None and for_tool is not None:
        raise UsageError("--to and --for both choose the layout; give one")
    choice = {"format": format, "for_tool": for_tool}
    written = []
    for part, dst in split_outputs(emb, path) if split else [(emb, Path(path))]:
        dst = with_extension(part, dst, **choice)
        part, notes = _as_the_tool_takes_it(part, dst, for_tool)
        dst = save_embedding(part, dst, force=force, **choice)
        fmt = output_format(part, dst, **choice)
        usage = fmt.usage(dst, part)
        loads = parts_loaded(part, for_tool) if for_tool else None
        written.append(Written(dst, fmt.name, part, {t: u.trigger for t, u in usage.items()},
                               {t: u.step for t, u in usage.items() if u.step}, notes, loads))
    return written


def _as_the_tool_takes_it(emb: Embedding, dst: Path, for_tool: str | None) -> tuple[Embedding, list[str]]:
    """`emb` as `--for TOOL` must write it to `dst`: a placeholder diffusers refuses becomes `<stem>`, and a name
    InvokeAI cannot trigger is refused before anything is written."""
    from textinv.formats.consumers import INVOKEAI_NAME, diffusers_token, invokeai_can_trigger

    if for_tool == "invokeai" and not invokeai_can_trigger(dst):
        raise EmbeddingFormatError(
            f"{dst.name}: InvokeAI triggers an embedding by <file name> and finds only names of letters, digits, "
            f"'.', ',', ' ', '_' and '-' in a prompt ({INVOKEAI_NAME.pattern}); name the output like that"
        )
    if for_tool not in RENAMED_FOR:
        return emb, []
    old, new = emb.tokens[0].name, diffusers_token(emb, dst)
    if new == old:
        return emb, []
    renamed = Embedding([Token(new, t.vectors, t.vectors_2, t.source_dtype, t.t5) for t in emb.tokens], name=emb.name,
                        step=emb.step, base_model=emb.base_model, base_model_hash=emb.base_model_hash,
                        init_words={new: emb.init_words[old]} if old in emb.init_words else {},
                        extra=dict(emb.extra))
    if len(old) == 1:
        note = (f"the placeholder {old} is a character CLIP's vocabulary already has, which diffusers' "
                f"load_textual_inversion refuses ('Token {old} already in tokenizer vocabulary'); the file's token is {new}")
    else:  # no tokenizer here to look it up in: CLIP's vocabulary has many plain words, but no <word>
        note = (f"diffusers' load_textual_inversion refuses a token CLIP's vocabulary already has, as it has many "
                f"plain words but no <word>: the file's token is {new}, not {old}")
    return renamed, [note]


def trigger_words(emb: Embedding, path: str | Path, *, format: str | None = None, for_tool: str | None = None):
    """tool -> the prompt word that triggers `emb` once written to `path` (as `save_embedding` would)."""
    return output_format(emb, path, format=format, for_tool=for_tool).triggers(Path(path), emb)
