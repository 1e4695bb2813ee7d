"""Textual-inversion embeddings: one in-memory type, and a reader and writer for each file format in the wild.

Every format wraps the same thing, a few rows of a text encoder's token-embedding matrix per placeholder. Files
are recognised by their content (never by extension alone), read without running pickle code
(`textinv.safe_pickle`), normalised to float32 [n_vectors, dim] on the CPU, and written atomically. The layouts
are described in the README's format table.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from textinv.atomic import atomic_write, torch_save
from textinv.errors import EmbeddingFormatError, OutputExistsError, TextinvError
from textinv.safe_pickle import ParameterDictState, load_torch_file

FAMILIES = {768: "SD1.x", 1024: "SD2.x", 64: "textinv toy"}  # 64: the small model textinv ships (--model toy)
MAX_FILE_BYTES = 64 * 2**20  # the largest real embedding seen is 1.4 MiB; a 64 MiB one is not an embedding
MAX_VECTORS = 1024  # per token; A1111 allows 75
A1111_STAR_ID = 265  # CLIP's id for "*", which AUTOMATIC1111 writes for every embedding
META_PREFIX = "textinv."  # our keys in safetensors metadata


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
    source_format: str | None = None  # a FORMATS key, for what it was read from
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


# --- reading ---------------------------------------------------------------------------------------------


def load_embedding(path: str | Path) -> Embedding:
    """Read any supported format (detected by content), safely: no pickle code is ever run."""
    path = Path(path)
    if path.is_dir():
        return _read_concept_folder(path)
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
    try:
        data, metadata = _CONTAINER_READERS[container](path)
    except TextinvError as e:
        raise type(e)(f"{path}: {e}") from None
    emb = _from_data(data, metadata, path, container)
    emb.path = str(path)
    return emb


def detect_container(path: Path) -> str:
    """'png' | 'safetensors' | 'torch-zip' | 'torch-legacy', from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in (2, 3, 4, 5):
        return "torch-legacy"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 0 < header_len <= path.stat().st_size:
            return "safetensors"
        if head[8:9] == b"{":
            raise EmbeddingFormatError(f"{path}: the safetensors file is truncated; download it again")
    raise EmbeddingFormatError(
        f"{path}: not an embedding file (neither a torch pickle, safetensors nor a PNG); "
        "supported formats are listed in the README"
    )


def detect_format(path: str | Path) -> str:
    """The FORMATS key of a readable file, e.g. 'a1111-pt' or 'diffusers-bin'."""
    return load_embedding(path).source_format or "unknown"


def _read_pickle(path: Path):
    try:
        return load_torch_file(path), {}
    except TextinvError:
        raise
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise EmbeddingFormatError(f"the file is truncated or corrupt ({_short(e)}); download it again") from None
    except Exception as e:  # a malformed pickle can raise almost anything
        raise EmbeddingFormatError(f"not a readable torch file ({type(e).__name__}: {_short(e)})") from None


def _read_safetensors(path: Path):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except Exception as e:
        raise EmbeddingFormatError(f"the safetensors file is truncated or corrupt ({_short(e)})") from None


def _read_png(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or im.info)
    except Exception as e:
        raise EmbeddingFormatError(f"unreadable PNG ({_short(e)})") from None
    payload = text.get("sd-ti-embedding")
    if payload is None:
        raise EmbeddingFormatError(
            "this PNG carries no embedding (no 'sd-ti-embedding' text chunk); "
            "embeddings hidden only in the pixels are not supported"
        )
    try:
        data = json.loads(base64.b64decode(payload))
    except ValueError as e:
        raise EmbeddingFormatError(f"the PNG's embedding chunk is corrupt ({_short(e)})") from None
    return _decode_torchtensors(data), {}


_CONTAINER_READERS: dict[str, Callable] = {
    "png": _read_png,
    "safetensors": _read_safetensors,
    "torch-zip": _read_pickle,
    "torch-legacy": _read_pickle,
}


def _decode_torchtensors(obj):
    if isinstance(obj, dict):
        if set(obj) == {"TORCHTENSOR"}:
            return torch.tensor(obj["TORCHTENSOR"], dtype=torch.float32)
        return {k: _decode_torchtensors(v) for k, v in obj.items()}
    return obj


def _from_data(data, metadata: dict[str, str], path: Path, container: str) -> Embedding:
    """Recognise the layout of what a file held and build the Embedding."""
    pickled = container.startswith("torch")
    if isinstance(data, list) and data and all(isinstance(d, dict) and "emb" in d for d in data):
        emb = _from_data(data[-1], metadata, path, container)
        emb.source_format = "xl-inversion-list"
        emb.extra["snapshots"] = str(len(data))
        return emb
    if isinstance(data, torch.Tensor):
        data = {path.stem: data}
    if not isinstance(data, dict) or not data:
        raise EmbeddingFormatError(f"{path}: holds no tensors ({type(data).__name__}); it is not an embedding")
    if "string_to_param" in data:
        return _from_string_to_param(data, path, container)
    if "t5xxl" in data:
        raise EmbeddingFormatError(
            f"{path}: a T5-XXL prompt embedding (for Flux/Chroma), not a CLIP textual-inversion embedding; "
            "textinv supports SD1.x, SD2.x and SDXL"
        )
    ours = _our_metadata(metadata)
    stem_name = ours.get("placeholders", [path.stem])[0] if ours.get("placeholders") else path.stem
    if "clip_l" in data or "clip_g" in data:
        if "clip_l" not in data or "clip_g" not in data:
            raise EmbeddingFormatError(f"{path}: an SDXL embedding needs both clip_l and clip_g; one is missing")
        tok = _token(stem_name, data["clip_l"], path, data["clip_g"])
        fmt = "kohya-sdxl" if any(k.startswith("modelspec.") for k in metadata) else "sdxl-safetensors"
        emb = Embedding([tok], name=metadata.get("modelspec.title"), source_format="sdxl-pt" if pickled else fmt)
        return _with_metadata(emb, ours, metadata)
    if set(data) == {"emb", "emb2"}:
        tok = _token(path.stem, data["emb"], path, data["emb2"])
        return Embedding([tok], name=path.stem, source_format="xl-inversion")
    if "emb_params" in data and len(data) == 1:
        fmt = "kohya" if any(k.startswith(("modelspec.", "ss_")) for k in metadata) else "a1111-safetensors"
        tok = _token(stem_name, data["emb_params"], path)
        emb = Embedding([tok], name=metadata.get("modelspec.title"), source_format="emb_params-pt" if pickled else fmt)
        return _with_metadata(emb, ours, metadata)
    not_tensors = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise EmbeddingFormatError(
            f"{path}: not a textual-inversion embedding (unexpected keys {', '.join(map(str, not_tensors[:5]))})"
        )
    keys = list(data)
    if sorted(ours.get("placeholders", [])) == sorted(keys):
        keys = ours["placeholders"]  # safetensors sorts its keys; the metadata keeps the order
    tokens = [_token(str(k), data[k], path) for k in keys]
    fmt = "diffusers-bin" if pickled else "diffusers-safetensors"
    return _with_metadata(Embedding(tokens, source_format=fmt), ours, metadata)


def _from_string_to_param(data: dict, path: Path, container: str) -> Embedding:
    params = data["string_to_param"]
    paper = isinstance(params, ParameterDictState)
    if paper:
        params = params.parameters
    if not isinstance(params, dict) or not params:
        raise EmbeddingFormatError(f"{path}: 'string_to_param' holds no tensors; it is not a usable embedding")
    is_a1111 = "name" in data or "step" in data
    ids = list((data.get("string_to_token") or {}).values())
    if is_a1111 and len(params) == 1 and (container == "png" or not isinstance(ids[0] if ids else 0, int)):
        # A PNG, or a .pt written by textinv (token id as a tensor, as the paper code needs): `name` is the word.
        names = [str(data.get("name") or path.stem)]
    elif is_a1111 and len(params) == 1:
        # AUTOMATIC1111 always stores '*' with the plain int 265; its prompt word is the file's stem.
        names = [path.stem]
    else:
        names = [str(k) for k in params]
    tokens = [_token(n, v, path) for n, v in zip(names, params.values(), strict=True)]
    if container == "png":
        fmt = "a1111-png"
    elif paper or not is_a1111:
        fmt = "paper-pt"
    else:
        fmt = "a1111-pt"
    emb = Embedding(
        tokens,
        name=_str_or_none(data.get("name")),
        step=int(data["step"]) if isinstance(data.get("step"), int | float) else None,
        base_model=_str_or_none(data.get("sd_checkpoint_name")),
        base_model_hash=_str_or_none(data.get("sd_checkpoint")),
        source_format=fmt,
    )
    return emb


def _token(name: str, value, path: Path, value_2=None) -> Token:
    vectors = _vectors(name, value, path)
    vectors_2 = _vectors(name, value_2, path) if value_2 is not None else None
    if vectors_2 is not None and vectors_2.shape[0] != vectors.shape[0]:
        raise EmbeddingFormatError(
            f"{path}: token {name!r} has {vectors.shape[0]} clip_l vectors but {vectors_2.shape[0]} clip_g vectors"
        )
    dtype = str(value.dtype).removeprefix("torch.") if isinstance(value, torch.Tensor) else "float32"
    return Token(name, vectors, vectors_2, source_dtype=dtype)


def _vectors(name: str, value, path: Path) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise EmbeddingFormatError(f"{path}: token {name!r} holds {type(value).__name__}, not a tensor")
    if not (value.is_floating_point()):
        raise EmbeddingFormatError(f"{path}: token {name!r} holds {value.dtype} numbers, not float vectors")
    t = value.detach().to("cpu", torch.float32)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise EmbeddingFormatError(f"{path}: token {name!r} has shape {list(value.shape)}, not [vectors, dim]")
    if t.shape[0] > MAX_VECTORS:
        raise EmbeddingFormatError(f"{path}: token {name!r} has {t.shape[0]} vectors; at most {MAX_VECTORS} make sense")
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise EmbeddingFormatError(f"{path}: token {name!r} holds {bad} NaN/inf values; the training diverged")
    return t.contiguous().clone()


def _our_metadata(metadata: dict[str, str]) -> dict:
    ours: dict = {}
    for key, value in metadata.items():
        if key.startswith(META_PREFIX):
            k = key[len(META_PREFIX) :]
            ours[k] = json.loads(value) if k in ("placeholders", "init_words", "extra") else value
    return ours


def _with_metadata(emb: Embedding, ours: dict, metadata: dict[str, str]) -> Embedding:
    placeholders = ours.get("placeholders")
    if placeholders and len(placeholders) == len(emb.tokens):
        for tok, name in zip(emb.tokens, placeholders, strict=True):
            tok.name = name
    emb.name = ours.get("name", emb.name)
    emb.step = int(ours["step"]) if "step" in ours else emb.step
    emb.base_model = ours.get("base_model", emb.base_model)
    emb.base_model_hash = ours.get("base_model_hash", emb.base_model_hash)
    emb.init_words.update(ours.get("init_words", {}))
    emb.extra.update(ours.get("extra", {}))
    return emb


def _read_concept_folder(folder: Path) -> Embedding:
    """An sd-concepts-library folder: learned_embeds.{safetensors,bin} + token_identifier.txt + type_of_concept.txt."""
    candidates = [folder / "learned_embeds.safetensors", folder / "learned_embeds.bin"]
    candidates += sorted(p for p in folder.iterdir() if p.suffix in (".bin", ".safetensors", ".pt"))
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise EmbeddingFormatError(f"{folder}: a folder with no embedding file (.bin, .safetensors or .pt) in it")
    emb = load_embedding(found)
    token_file, type_file = folder / "token_identifier.txt", folder / "type_of_concept.txt"
    if token_file.is_file() and len(emb.tokens) == 1:
        emb.tokens[0].name = token_file.read_text(encoding="utf-8").strip() or emb.tokens[0].name
    if type_file.is_file():
        emb.extra["concept_type"] = type_file.read_text(encoding="utf-8").strip()
    emb.name = emb.name or folder.name
    emb.source_format = "sd-concepts-folder"
    return emb


# --- writing ---------------------------------------------------------------------------------------------

WRITE_FORMATS = {
    "pt": "AUTOMATIC1111 / original paper code / InvokeAI .pt",
    "bin": "diffusers / sd-concepts-library learned_embeds.bin",
    "safetensors": "diffusers learned_embeds.safetensors (SDXL: clip_l + clip_g)",
    "kohya": "kohya-ss / AUTOMATIC1111 emb_params .safetensors",
    "png": "AUTOMATIC1111 embedding inside a PNG",
}
_EXTENSIONS = {".pt": "pt", ".bin": "bin", ".safetensors": "safetensors", ".png": "png"}


def save_embedding(emb: Embedding, path: str | Path, *, format: str | None = None, force: bool = False) -> Path:
    """Write atomically; `format` is 'pt' | 'bin' | 'safetensors' | 'kohya' | 'png', else from the extension."""
    path = Path(path)
    fmt = format or _EXTENSIONS.get(path.suffix.lower())
    if fmt not in WRITE_FORMATS:
        raise EmbeddingFormatError(
            f"{path}: cannot tell the output format from {path.suffix or 'no extension'!r}; "
            f"use .pt, .bin, .safetensors or .png, or --to {'|'.join(WRITE_FORMATS)}"
        )
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force to overwrite it")
    if not emb.tokens:
        raise EmbeddingFormatError("nothing to write: the embedding has no tokens")
    _WRITERS[fmt](emb, path)  # atomic: creates the folder, and reports OS errors as one line
    return path


def _meta(emb: Embedding) -> dict:
    """What we know, as JSON-able values; travels in every format that has room for it."""
    meta = {
        "placeholders": [t.name for t in emb.tokens],
        "num_vectors": [t.num_vectors for t in emb.tokens],
        "name": emb.name,
        "step": emb.step,
        "base_model": emb.base_model,
        "base_model_hash": emb.base_model_hash,
        "init_words": emb.init_words,
        "extra": emb.extra,
        "family": emb.family,
    }
    return {k: v for k, v in meta.items() if v not in (None, {}, [])}


def _safetensors_metadata(emb: Embedding) -> dict[str, str]:
    meta = {"format": "pt"}
    for key, value in _meta(emb).items():
        meta[META_PREFIX + key] = value if isinstance(value, str) else json.dumps(value)
    return meta


def _single_token(emb: Embedding, fmt: str) -> Token:
    if len(emb.tokens) != 1:
        names = ", ".join(t.name for t in emb.tokens)
        raise EmbeddingFormatError(
            f"the {fmt} format holds one token but this embedding has {len(emb.tokens)} ({names}); "
            "pick one with --token NAME, or write .pt or .safetensors"
        )
    return emb.tokens[0]


def _require_single_encoder(emb: Embedding, fmt: str) -> None:
    if emb.is_sdxl:
        raise EmbeddingFormatError(f"the {fmt} format cannot hold an SDXL embedding; write .safetensors instead")


def _write_pt(emb: Embedding, path: Path) -> None:
    if emb.is_sdxl:
        tok = _single_token(emb, "SDXL .pt")
        data = {"clip_l": tok.vectors.clone(), "clip_g": tok.vectors_2.clone()}
    else:
        # Exactly AUTOMATIC1111's keys. One token is stored as '*' (diffusers reads only that key) with `name` set to
        # the placeholder (diffusers' token); the id is a tensor, so that the paper code's `.to(device)` works and
        # our reader can tell the file from one of AUTOMATIC1111's, whose prompt word is the file stem.
        keys = ["*"] if len(emb.tokens) == 1 else [t.name for t in emb.tokens]
        data = {
            "string_to_token": {k: torch.tensor(_clip_id(k)) for k in keys},
            "string_to_param": {k: t.vectors.clone() for k, t in zip(keys, emb.tokens, strict=True)},
            "name": emb.tokens[0].name if len(emb.tokens) == 1 else emb.name,
            "step": emb.step or 0,
            "sd_checkpoint": emb.base_model_hash,
            "sd_checkpoint_name": emb.base_model,
        }
    torch_save(data, path)


def _clip_id(placeholder: str) -> int:
    """CLIP's id for a one-character placeholder ('*' -> 265); other strings are not single CLIP tokens."""
    from textinv.toy.tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    if len(placeholder) == 1 and placeholder in chars:
        return 256 + chars.index(placeholder)  # the end-of-word forms follow the 256 byte characters
    return A1111_STAR_ID


def _write_bin(emb: Embedding, path: Path) -> None:
    if emb.is_sdxl:
        tok = _single_token(emb, "SDXL .bin")
        data = {"clip_l": tok.vectors.clone(), "clip_g": tok.vectors_2.clone()}
    else:
        # one vector as 1-D [dim]: the layout every reader takes (InvokeAI misreads a 2-D one-row tensor)
        data = {t.name: (t.vectors[0].clone() if t.num_vectors == 1 else t.vectors.clone()) for t in emb.tokens}
    torch_save(data, path)


def _write_safetensors(emb: Embedding, path: Path) -> None:
    from safetensors.torch import save_file

    if emb.is_sdxl:
        tok = _single_token(emb, "SDXL .safetensors")
        data = {"clip_l": tok.vectors.contiguous(), "clip_g": tok.vectors_2.contiguous()}
    else:
        data = {t.name: t.vectors.contiguous() for t in emb.tokens}
    atomic_write(path, lambda tmp: save_file(data, str(tmp), metadata=_safetensors_metadata(emb)))


def _write_kohya(emb: Embedding, path: Path) -> None:
    from safetensors.torch import save_file

    tok = _single_token(emb, "kohya")
    if emb.is_sdxl:
        data = {"clip_l": tok.vectors.contiguous(), "clip_g": tok.vectors_2.contiguous()}
    else:
        data = {"emb_params": tok.vectors.contiguous()}
    meta = _safetensors_metadata(emb)
    meta["modelspec.title"] = emb.name or tok.name
    atomic_write(path, lambda tmp: save_file(data, str(tmp), metadata=meta))


def _write_png(emb: Embedding, path: Path) -> None:
    from PIL import Image, ImageDraw, PngImagePlugin

    _require_single_encoder(emb, "PNG")
    tok = _single_token(emb, "PNG")
    data = {
        "string_to_token": {"*": A1111_STAR_ID},
        "string_to_param": {"*": {"TORCHTENSOR": tok.vectors.tolist()}},
        "name": tok.name,
        "step": emb.step or 0,
        "sd_checkpoint": emb.base_model_hash,
        "sd_checkpoint_name": emb.base_model,
    }
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(data).encode()).decode())
    image = Image.new("RGB", (512, 128), (24, 24, 32))
    ImageDraw.Draw(image).text((16, 16), f"{tok.name}\n{tok.num_vectors}v {emb.step or 0}s", fill=(230, 230, 230))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


_WRITERS: dict[str, Callable[[Embedding, Path], None]] = {
    "pt": _write_pt,
    "bin": _write_bin,
    "safetensors": _write_safetensors,
    "kohya": _write_kohya,
    "png": _write_png,
}


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
    models = {e.base_model for e in embs}
    return Embedding(
        tokens,
        name=first.name if len(embs) == 1 else None,
        base_model=models.pop() if len(models) == 1 else None,
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


def _str_or_none(value) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:160]
