"""diffusers / sd-concepts-library: `{placeholder: tensor}` in learned_embeds.bin or .safetensors, and the
concept folder (learned_embeds.* + token_identifier.txt + type_of_concept.txt)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from textinv.atomic import atomic_write, torch_save, write_text
from textinv.errors import EmbeddingFormatError
from textinv.formats import TENSOR_SUFFIXES
from textinv.formats.common import (
    Source,
    encoder_parts,
    ours,
    require_single_encoder,
    safetensors_metadata,
    single_token,
    token,
    warn,
    with_metadata,
)
from textinv.formats.consumers import DIFFUSERS_FOLDER, DIFFUSERS_PICKLE, DIFFUSERS_SAFETENSORS
from textinv.formats.embedding import Embedding
from textinv.formats.record import Conditional, Format

TOKEN_FILE = "token_identifier.txt"
TYPE_FILE = "type_of_concept.txt"


def read_word_file(path: Path) -> str:
    """A concept's token_identifier.txt or type_of_concept.txt: one short line, or '' (with a warning) for a
    file that is long, several lines or not UTF-8, which is not a token."""
    raw = path.read_bytes()[:1001]
    if len(raw) > 1000:
        warn(f"{path}: ignored, it holds more than one short line")
        return ""
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        warn(f"{path}: ignored, it is not UTF-8 text")
        return ""
    if "\n" in text:
        warn(f"{path}: ignored, it holds more than one short line")
        return ""
    return text


def _all_tensors(data) -> bool:
    return isinstance(data, dict) and bool(data) and all(isinstance(v, torch.Tensor) for v in data.values())


def _read(data, metadata, source: Source) -> Embedding:
    found = ours(metadata, source.path)
    keys = list(data)
    if sorted(found.get("placeholders", [])) == sorted(keys):
        keys = found["placeholders"]  # safetensors sorts its keys; the metadata keeps the order
    tokens = [token(str(k), data[k], source.path) for k in keys]
    fmt = "diffusers-bin" if source.pickled else "diffusers-safetensors"
    return with_metadata(Embedding(tokens, source_format=fmt), found)


def _write_bin(emb: Embedding, path: Path) -> None:
    tok = single_token(emb, "diffusers-bin")
    if emb.multi_encoder:
        data = encoder_parts(tok)
    else:  # one vector as 1-D [dim], as sd-concepts-library stores it (InvokeAI reads shape[0] as the width)
        data = {tok.name: tok.vectors[0].clone() if tok.num_vectors == 1 else tok.vectors.clone()}
    torch_save(data, path)


def write_safetensors(emb: Embedding, path: Path) -> None:
    tok = single_token(emb, "diffusers-safetensors")
    if emb.multi_encoder:
        data = encoder_parts(tok)
    else:
        data = {tok.name: tok.vectors.contiguous()}
    atomic_write(path, lambda tmp: save_file(data, str(tmp), metadata=safetensors_metadata(emb)))


def concept_file(folder: Path) -> Path:
    """The embedding file of an sd-concepts-library folder: learned_embeds.{safetensors,bin}, else the only one."""
    candidates = [folder / "learned_embeds.safetensors", folder / "learned_embeds.bin"]
    candidates += sorted(p for p in folder.iterdir() if p.suffix in TENSOR_SUFFIXES)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise EmbeddingFormatError(f"{folder}: a folder with no embedding file (.bin, .safetensors or .pt) in it")
    return found


def read_concept_folder(emb: Embedding, folder: Path) -> Embedding:
    """An sd-concepts-library folder, given the embedding its `concept_file` holds: named after
    token_identifier.txt, with type_of_concept.txt recorded."""
    apply_concept_files(emb, folder / TOKEN_FILE, folder / TYPE_FILE)
    emb.name = emb.name or folder.name
    emb.source_format = "sd-concepts-folder"
    return emb


def apply_concept_files(emb: Embedding, token_file: Path | None, type_file: Path | None) -> Embedding:
    """Name the one token after token_identifier.txt and record type_of_concept.txt, where they are readable."""
    if token_file is not None and token_file.is_file() and len(emb.tokens) == 1:
        emb.tokens[0].name = read_word_file(token_file) or emb.tokens[0].name
    if type_file is not None and type_file.is_file():
        concept_type = read_word_file(type_file).lower()
        if concept_type:
            emb.extra["concept_type"] = concept_type
    return emb


def _write_concept_folder(emb: Embedding, folder: Path) -> None:
    tok = single_token(emb, "sd-concepts")
    require_single_encoder(emb, "sd-concepts")
    if folder.exists() and not folder.is_dir():
        raise EmbeddingFormatError(f"{folder} is a file; an sd-concepts concept is a folder")
    _write_bin(emb, folder / "learned_embeds.bin")  # atomic: creates the folder
    write_text(folder / TOKEN_FILE, tok.name)
    if emb.extra.get("concept_type"):
        write_text(folder / TYPE_FILE, emb.extra["concept_type"])


FORMATS = [
    Format(
        name="diffusers-bin",
        description="diffusers / sd-concepts-library learned_embeds.bin ({token: [dim]} for one vector)",
        recognise=lambda data, metadata, source: source.pickled and _all_tensors(data),
        read=_read,
        write=_write_bin,
        extension=".bin",
        loads_in={"a1111": "{stem}", "comfyui": "embedding:{stem}"},
        loads_if={
            "diffusers": DIFFUSERS_PICKLE,
            # InvokeAI reads a one-key file's width as shape[0], kohya its vector count: 1-D [dim] suits only one
            "invokeai": Conditional("<{stem}>", "one vector, or SDXL",
                                    lambda emb: emb.is_sdxl or emb.tokens[0].num_vectors == 1),
            "kohya": Conditional("{stem}", "two or more vectors, or SDXL",
                                 lambda emb: emb.is_sdxl or emb.tokens[0].num_vectors > 1),
        },
    ),
    Format(
        name="diffusers-safetensors",
        description="diffusers learned_embeds.safetensors ({token: [n, dim]}; SDXL: clip_l + clip_g)",
        recognise=lambda data, metadata, source: not source.pickled and _all_tensors(data),
        read=_read,
        write=write_safetensors,
        extension=".safetensors",
        loads_in={"a1111": "{stem}", "comfyui": "embedding:{stem}", "kohya": "{stem}"},
        loads_if={
            "diffusers": DIFFUSERS_SAFETENSORS,
            # a 2-D {token: [n, dim]} gives InvokeAI the width n; clip_g gives it 1280
            "invokeai": Conditional("<{stem}>", "SDXL only", lambda emb: emb.is_sdxl),
        },
    ),
    Format(
        name="sd-concepts-folder",
        description="sd-concepts-library folder: learned_embeds.bin + token_identifier.txt",
        recognise=lambda data, metadata, source: source.container == "folder",
        read=lambda data, metadata, source: read_concept_folder(data, source.path),  # data: concept_file's Embedding
        write=_write_concept_folder,
        extension="",
        # the concepts notebook loads a concept with diffusers (huggingface/notebooks @8c6ec54
        # diffusers/stable_conceptualizer_inference.ipynb, `pipe.load_textual_inversion(repo_id_embeds)`); InvokeAI
        # reads its learned_embeds.bin (v6.13.8 load/model_loaders/textual_inversion.py:44-45), named after the folder
        loads_if={"diffusers": DIFFUSERS_FOLDER, "sd-concepts": DIFFUSERS_FOLDER,
                  "invokeai": Conditional("<{stem}>", "one vector", lambda emb: emb.tokens[0].num_vectors == 1)},
    ),
]
