"""The tools that load embedding files, as far as the format records speak for them: for each, what it loads from a
path and the word that triggers it, written from the tool's own loading code (version, file and line at each).

diffusers is not here: tests/test_consumers.py runs its real `load_textual_inversion`. InvokeAI's own probe and
loader also run in `make interop` (interop/invokeai_check.py).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file


class Loaded(NamedTuple):
    trigger: str
    vectors: torch.Tensor  # [n, dim]; SDXL: the text_encoder (clip_l) part
    vectors_2: torch.Tensor | None = None  # SDXL: the text_encoder_2 (clip_g) part


def _tensors(path: Path):
    """The file's data as the tools read it: safetensors by extension, else a torch pickle (weights only, as torch
    >= 2.6 loads by default and AUTOMATIC1111's restricted unpickler allows)."""
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _rows(t) -> torch.Tensor | None:
    return t.unsqueeze(0) if isinstance(t, torch.Tensor) and t.dim() == 1 else t


# --- AUTOMATIC1111 stable-diffusion-webui v1.10.1 modules/textual_inversion/textual_inversion.py ------------------
# :157-180 `load_from_file`: the name is the file's stem (:158), for an image the `name` its data carries (:161-173);
# .bin/.pt are torch pickles, .safetensors safetensors. :287-310 `create_embedding_from_data`: string_to_param with
# exactly one term (:288-295), clip_g + clip_l (:296-299), or a one-key dict of a tensor, 1-D unsqueezed (:300-306).


def a1111(path: Path, sdxl: bool) -> Loaded | None:
    if path.is_dir():
        return None
    name, ext = path.stem, path.suffix.upper()
    if ext == ".PNG":
        from PIL import Image

        with Image.open(path) as im:
            text = im.info.get("sd-ti-embedding")
        if text is None:
            return None
        data = json.loads(base64.b64decode(text), object_hook=lambda d: torch.tensor(d["TORCHTENSOR"])
                          if "TORCHTENSOR" in d else d)
        name = data.get("name", name)
    elif ext in (".BIN", ".PT", ".SAFETENSORS"):
        data = _tensors(path)
    else:
        return None
    if "string_to_param" in data:
        params = data["string_to_param"]
        return Loaded(name, _rows(next(iter(params.values())))) if len(params) == 1 else None
    if "clip_g" in data and "clip_l" in data:
        return Loaded(name, data["clip_l"], data["clip_g"])
    if isinstance(next(iter(data.values())), torch.Tensor) and len(data) == 1:
        return Loaded(name, _rows(next(iter(data.values()))))
    return None


# --- InvokeAI v6.13.8 ------------------------------------------------------------------------------------------------
# invokeai/backend/model_manager/model_on_disk.py:26-29: the model is named after a file's stem or a folder's name.
# configs/textual_inversion.py:38-63 `_file_looks_like_embedding`, :66-94 `_get_base_or_raise` (a one-key file's
# width is its first value's shape[0]), :139-142 a folder's weight files. load/model_loaders/textual_inversion.py:44-45
# reads a folder's learned_embeds.bin. invokeai/backend/textual_inversion.py:39-64 `from_checkpoint`: the first
# string_to_param value (a warning when there are more), emb_params, clip_g (embedding) + clip_l (embedding_2), or the
# first value, 1-D unsqueezed. invokeai/app/util/ti_utils.py:11-15: a prompt's `<name>` matching <[a-zA-Z0-9., _-]+>.


def invokeai(path: Path, sdxl: bool) -> Loaded | None:
    name = path.stem if path.suffix in {".safetensors", ".bin", ".pt", ".ckpt"} else path.name
    file = path / "learned_embeds.bin" if path.is_dir() else path
    if not file.is_file() or file.suffix not in {".safetensors", ".bin", ".pt", ".ckpt"}:
        return None
    data = _tensors(file)
    named = file.name.startswith("learned_embeds.")
    if not (named or {"string_to_param", "emb_params", "clip_g"} & set(data)
            or (len(data) < 10 and all(isinstance(v, torch.Tensor) for v in data.values()))):
        return None
    if "string_to_token" in data:
        width = list(data["string_to_param"].values())[0].shape[-1]
    elif "emb_params" in data:
        width = data["emb_params"].shape[-1]
    elif "clip_g" in data:
        width = data["clip_g"].shape[-1]
    else:
        width = list(data.values())[0].shape[0]
    if width not in (768, 1024, 1280) or not re.fullmatch(r"[a-zA-Z0-9., _-]+", name):
        return None
    if "string_to_param" in data:
        return Loaded(f"<{name}>", next(iter(data["string_to_param"].values())))
    if "emb_params" in data:
        return Loaded(f"<{name}>", data["emb_params"])
    if "clip_g" in data and "clip_l" in data:
        return Loaded(f"<{name}>", data["clip_l"], data["clip_g"])
    return Loaded(f"<{name}>", _rows(next(iter(data.values()))))


# --- ComfyUI comfy/sd1_clip.py `load_embed` (commit 00728eb20fce05955f89ef1ccf5f6167416e94cf) -----------------------
# Reads .safetensors, .pt and .bin; string_to_param's first value; else `embed[embed_key]` ('clip_l' for SD1.x and
# SDXL's first encoder, 'clip_g' for its second) if present; else the first value; a 1-D tensor is one vector. The
# prompt names it `embedding:<file stem>`.


def comfyui(path: Path, sdxl: bool) -> Loaded | None:
    if path.is_dir() or path.suffix not in (".safetensors", ".pt", ".bin"):
        return None
    data = _tensors(path)

    def part(key: str):
        if "string_to_param" in data:
            return next(iter(data["string_to_param"].values()))
        return data[key] if key in data else next(iter(data.values()))

    if sdxl:
        return Loaded(f"embedding:{path.stem}", _rows(part("clip_l")), _rows(part("clip_g")))
    return Loaded(f"embedding:{path.stem}", _rows(part("clip_l")))


# --- kohya-ss sd-scripts @48d368fa557731ad0488c07304dfeba8c07910eb ------------------------------------------------
# gen_img.py:2089-2127 (`--textual_inversion_embeddings FILE`): safetensors or torch.load, string_to_param unwrapped,
# then SD: the first value, SDXL: data["clip_l"] and data["clip_g"]; `num_vectors_per_token = embeds1.size()[0]`, so a
# 1-D [dim] tensor is read as dim one-number vectors; the prompt word is the file's stem (tok, tok1, tok2, ...).
# (train_textual_inversion.py:160-183 `--weights` is where training starts from, not a way to generate: it takes the
# first tensor of any of these files, 1-D unsqueezed, and asserts it has --num_vectors_per_token rows, :270-274.)


def kohya(path: Path, sdxl: bool) -> Loaded | None:
    if path.is_dir() or path.suffix not in (".safetensors", ".pt", ".bin"):
        return None
    data = _tensors(path)
    if "string_to_param" in data:
        data = data["string_to_param"]
    if sdxl:
        if "clip_l" not in data or "clip_g" not in data:
            return None
        first, second = data["clip_l"], data["clip_g"]
    else:
        first, second = next(iter(data.values())), None
    if first.dim() != 2:  # read as size()[0] vectors of size()[1:]: a 1-D tensor gives `dim` vectors of nothing
        return None
    return Loaded(path.stem, first, second)


TOOLS = {"a1111": a1111, "invokeai": invokeai, "comfyui": comfyui, "kohya": kohya}
