"""The registry of embedding file formats: every `Format` record, in the order they are tried on a file.

Reading opens the container (`container.py`, which bounds every size a file declares), refuses what is plainly
not an embedding (a LoRA, model weights, a T5 prompt embedding), then asks each record in turn whether it
recognises the data. Writing picks a record by name, by extension shorthand (`pt`, `bin`, ...) or by the tool
the file is for (`--for a1111`). The CLI's choices and the README's format table are derived from here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from textinv.errors import EmbeddingFormatError, TextinvError
from textinv.formats import (
    EMBEDDING_SUFFIXES,
    FOR_TOOL,
    RENAMED_FOR,
    SHORTHANDS,
    T5_TOOLS,
    TOOLS,
    WRITE_NAMES,
    a1111,
    comfyui,
    diffusers,
    kohya,
    onetrainer,
    paper,
    png,
    sdxl,
)
from textinv.formats.common import Source
from textinv.formats.container import MAX_FILE_BYTES, detect_container, read_container
from textinv.formats.embedding import Embedding
from textinv.formats.record import Format

__all__ = ["FORMATS", "TOOLS", "Format", "detect_container", "read_embedding", "resolve", "write_embedding"]

_ALL = {f.name: f for family in (a1111, paper, png, sdxl, kohya, diffusers, onetrainer, comfyui)
        for f in family.FORMATS}
# The order records are tried on a file: the most specific layouts first, plain {token: tensor} last; a T5 part
# (onetrainer, comfyui-t5) before the CLIP-only multi-encoder layouts, which would drop it.
_ORDER = ["xl-inversion-list", "a1111-png", "a1111-pt", "paper-pt", "onetrainer", "comfyui-t5", "sdxl-pt",
          "kohya-sdxl", "sdxl-safetensors",
          "xl-inversion", "emb_params-pt", "kohya", "a1111-safetensors", "diffusers-bin", "diffusers-safetensors",
          "sd-concepts-folder"]
FORMATS: dict[str, Format] = {name: _ALL[name] for name in _ORDER}
WRITABLE = [name for name in WRITE_NAMES if FORMATS[name].write is not None]
if len(WRITABLE) != len(WRITE_NAMES) or any(FORMATS[n].name != n for n in [*SHORTHANDS.values(), *FOR_TOOL.values()]):
    raise RuntimeError("textinv.formats names a format that has no writer")


# --- reading ---------------------------------------------------------------------------------------------


def read_embedding(path: Path) -> Embedding:
    """Read any supported format (detected by content), safely: no pickle code is ever run."""
    if path.is_dir():
        inner = read_embedding(diffusers.concept_file(path))
        return FORMATS["sd-concepts-folder"].read(inner, {}, Source(path, "folder"))
    if not path.exists():
        raise EmbeddingFormatError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise EmbeddingFormatError(f"{path}: the file is empty (0 bytes); download it again")
    if size > MAX_FILE_BYTES:
        raise EmbeddingFormatError(
            f"{path}: {size / 2**20:.0f} MiB is far too large for an embedding (they are kilobytes); "
            "is it a model checkpoint? Pass it with --model instead"
        )
    container = detect_container(path)
    if container is None:
        raise EmbeddingFormatError(
            f"{path}: not an embedding file (neither a torch pickle, safetensors nor a PNG); "
            "supported formats are listed in the README"
        )
    try:
        data, metadata = read_container(path, container)
    except TextinvError as e:
        raise type(e)(f"{path}: {e}") from None
    source = Source(path, container)
    if isinstance(data, torch.Tensor):
        data = {path.stem: data}
    if not isinstance(data, dict | list) or not data:
        raise EmbeddingFormatError(f"{path}: holds no tensors ({type(data).__name__}); it is not an embedding")
    _refuse_non_embeddings(data, path)
    for fmt in FORMATS.values():
        if fmt.recognise(data, metadata, source):
            emb = fmt.read(data, metadata, source)
            if not emb.tokens:
                raise EmbeddingFormatError(f"{path}: a {fmt.name} layout holding no tokens; it is not an embedding")
            emb.path = str(path)
            return emb
    keys = [repr(k)[:40] for k, v in data.items() if not isinstance(v, torch.Tensor)] if isinstance(data, dict) else []
    raise EmbeddingFormatError(
        f"{path}: not a textual-inversion embedding (unexpected keys {', '.join(keys[:5]) or type(data).__name__})"
    )


_LORA_PREFIXES = ("lora_unet_", "lora_te", "lora_transformer_")  # kohya's LoRA key names
_LORA_PARTS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.")  # peft, diffusers
_WEIGHT_ENDINGS = (".weight", ".bias", ".alpha", ".running_mean", ".running_var")


def _refuse_non_embeddings(data, path: Path) -> None:
    """A LoRA, model weights or a T5 prompt embedding are refused by name, before any layout is tried."""
    if not isinstance(data, dict) or "string_to_param" in data:
        return
    keys = [str(k) for k in data]
    if any(k in data for k in ("t5xxl", "t5")) and "clip_l" not in data:
        raise EmbeddingFormatError(
            f"{path}: a T5-XXL prompt embedding with no CLIP part (for Flux/Chroma in ComfyUI), not a CLIP "
            "textual-inversion embedding; textinv reads T5 vectors beside their clip_l part (SD3 and Flux.1 files "
            "as OneTrainer and ComfyUI write them)"
        )
    if any(k.startswith(_LORA_PREFIXES) or any(p in k for p in _LORA_PARTS) for k in keys):
        raise EmbeddingFormatError(
            f"{path}: this is a LoRA, not an embedding (it holds {keys[0]!r}); load it with your tool's LoRA loader"
        )
    weights = [k for k in keys if "." in k and k.endswith(_WEIGHT_ENDINGS)]
    if weights:
        raise EmbeddingFormatError(
            f"{path}: holds model weights ({weights[0]!r}), not an embedding; a model goes to --model"
        )


# --- writing ---------------------------------------------------------------------------------------------


def resolve(choice: str | None, emb: Embedding, path: Path, *, tool: bool = False) -> Format:
    """The record to write: a format name, an extension shorthand, a tool from TOOLS (`tool`: `choice` is one even
    where a format has its name, as kohya), or (None) the extension."""
    if choice is None:
        suffix = path.suffix.lower()
        choice = suffix.removeprefix(".") if suffix in EMBEDDING_SUFFIXES else None
        if choice is None:
            raise EmbeddingFormatError(
                f"{path}: cannot tell the output format from {path.suffix or 'no extension'!r}; "
                f"use .pt, .bin, .safetensors or .png, --to {'|'.join(WRITABLE)}, or --for {'|'.join(TOOLS)}"
            )
    as_tool = tool or (choice in TOOLS and choice not in FORMATS)
    name = (_for_t5_tool(choice, emb) if as_tool else None) or FOR_TOOL.get(choice) or SHORTHANDS.get(choice) or choice
    if name == "a1111-pt" and choice == "pt" and len(emb.tokens) > 1:
        name = "paper-pt"
    fmt = FORMATS.get(name)
    if fmt is None or fmt.write is None:
        raise EmbeddingFormatError(
            f"cannot write {choice!r}; the formats are {', '.join(WRITABLE)} and the tools {', '.join(TOOLS)}"
        )
    return fmt


def _for_t5_tool(choice: str, emb: Embedding) -> str | None:
    """The layout `--for TOOL` writes for an SD3 or Flux.1 embedding (`formats.T5_TOOLS`); a tool that would
    misread one is refused. None for a CLIP-only embedding or a choice that is not a tool."""
    if emb.architecture is None or choice not in TOOLS:
        return None
    entry = T5_TOOLS[emb.architecture][choice]
    if isinstance(entry, str):
        able = [t for t, e in T5_TOOLS[emb.architecture].items() if isinstance(e, tuple)]
        what = "an SD3" if emb.architecture == "SD3" else "a Flux.1"
        raise EmbeddingFormatError(f"--for {choice}: not for {what} embedding: {entry}; the tools that load one are "
                                   f"{', '.join(able)}")
    return entry[0]


def parts_loaded(emb: Embedding, tool: str) -> str | None:
    """What `tool` loads of an SD3 or Flux.1 embedding written `--for` it, e.g. 'clip_l and t5xxl'; None else."""
    entry = T5_TOOLS[emb.architecture].get(tool) if emb.architecture else None
    return entry[1] if isinstance(entry, tuple) else None


def write_embedding(emb: Embedding, path: Path, fmt: Format) -> Path:
    if not emb.tokens:
        raise EmbeddingFormatError("nothing to write: the embedding has no tokens")
    fmt.write(emb, path)  # atomic: creates the folder, and reports OS errors as one line naming the path
    return path


def _conditions(fmt: Format, tool: str, for_tool: bool) -> list:
    """The ways `tool` loads `fmt`; `--for` a tool in RENAMED_FOR never writes a token it refuses."""
    return [c for c in fmt.conditions(tool) if not (for_tool and tool in RENAMED_FOR and "token=" in c.condition)]


def _loads_cell(fmt: Format, tools: list[str], for_tool: bool = False) -> str:
    """Each of `tools` with its trigger word, and for a tool that loads `fmt` only sometimes, when."""
    parts = []
    for tool in tools:
        if tool in fmt.loads_in:
            parts.append(f"{TOOLS[tool]}: `{fmt.loads_in[tool]}`")
        else:
            ways = "; ".join(f"`{c.trigger}` ({c.condition})" for c in _conditions(fmt, tool, for_tool))
            parts.append(f"{TOOLS[tool]}: {ways}")
    return "; ".join(parts)


def readme_table() -> str:
    """The README's table of written formats: for each, the tools that load it and the word that triggers it."""
    pick = {fmt: [t for t, f in FOR_TOOL.items() if f == fmt] for fmt in WRITABLE}
    lines = ["| `--to` | extension | what it is | loads in (trigger word) | `--for` |", "|---|---|---|---|---|"]
    for name in WRITABLE:
        fmt = FORMATS[name]
        shorthand = [s for s, n in SHORTHANDS.items() if n == name]
        ext = f"`{fmt.extension}`" if fmt.extension else "a folder"
        names = ", ".join(f"`{n}`" for n in [name, *shorthand])
        tools = [*fmt.loads_in, *(t for t in fmt.loads_if if t not in fmt.loads_in)]
        lines.append(f"| {names} | {ext} | {fmt.description} | {_loads_cell(fmt, tools) or '–'} | "
                     f"{', '.join(f'`{t}`' for t in pick[name]) or '–'} |")
    return "\n".join(lines)


def t5_tools_table() -> str:
    """The README's table of what each tool loads of an SD3 or Flux.1 embedding, from `formats.T5_TOOLS`."""
    lines = ["| `--for` | SD3 (clip_l, clip_g, t5) | Flux.1 (clip_l, t5) |", "|---|---|---|"]

    def cell(entry) -> str:
        if isinstance(entry, str):
            return f"refused: {entry}"
        return f"`{entry[0]}`: loads {entry[1]}"

    for tool in TOOLS:
        lines.append(f"| `{tool}` | {cell(T5_TOOLS['SD3'][tool])} | {cell(T5_TOOLS['Flux.1'][tool])} |")
    return "\n".join(lines)


def readme_for_table() -> str:
    """The README's table of `--for TOOL`: the layout written, the trigger word, and what else the tool needs."""
    lines = ["| `--for` | writes | trigger word (and when) | extra step |", "|---|---|---|---|"]
    for tool, name in FOR_TOOL.items():
        fmt = FORMATS[name]
        steps = [c.condition for c in _conditions(fmt, tool, for_tool=True) if c.step]
        renamed = "; a placeholder it refuses (`*`) is written as `<{stem}>`" if tool in RENAMED_FOR else ""
        lines.append(f"| `{tool}` | `{name}` ({fmt.extension or 'a folder'}) | "
                     f"{_loads_cell(fmt, [tool], for_tool=True)}{renamed} | "
                     f"{'; '.join(steps) + ' (printed)' if steps else '–'} |")
    return "\n".join(lines)
