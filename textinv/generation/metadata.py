"""The generation metadata textinv writes into each PNG, in the three layouts readers look for.

`parameters` is AUTOMATIC1111's text (read by the webui's PNG Info, sd-parsers, sd-prompt-reader, civitai),
`Dream` InvokeAI 2.x's dream> command line, `sd-metadata` InvokeAI 2.x's JSON. A chunk that its readers would
read back wrong for this prompt is left out (`metadata_rules`); `left_out` says which and why.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from textinv import __version__
from textinv.errors import DataError, first_line
from textinv.generation.metadata_rules import a1111_misreads, dream_misreads, invoke_prompt, invokeai_misreads
from textinv.hashing import MODEL_HASH_DIGITS

if TYPE_CHECKING:
    from textinv.generation.sampling import GenerationParams


def _quote(value) -> str:
    """A value as AUTOMATIC1111 writes it into the settings line: JSON-quoted when it holds ',', ':' or a line
    break (stable-diffusion-webui v1.10.1 modules/infotext_utils.py:56-60, `quote`)."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def a1111_parameters(p: GenerationParams) -> str:
    """AUTOMATIC1111's `parameters` text: prompt, `Negative prompt: ...`, then one line of `Key: value` pairs.

    `Model hash` is the first 10 hex digits of the checkpoint file's sha256 and `Model` its name without the
    extension, as the webui writes them (v1.10.1 modules/processing.py:779-780 and :890-891, from
    modules/sd_models.py:88 `name_for_extra` and :93 `shorthash`); a hub id or folder has no file hash."""
    lines = [p.prompt]
    if p.negative:
        lines.append(f"Negative prompt: {p.negative}")
    pairs = [
        ("Steps", p.steps),
        ("Sampler", p.sampler),
        ("CFG scale", _num(p.cfg)),
        ("Seed", p.seed),
        ("Size", f"{p.width}x{p.height}"),
    ]
    if p.model_sha256:
        pairs.append(("Model hash", p.model_sha256[:MODEL_HASH_DIGITS]))
    pairs.append(("Model", p.model))
    if p.strength is not None:
        pairs.append(("Denoising strength", _num(p.strength)))
    if p.embeddings:
        pairs.append(("TI hashes", ", ".join(f"{name}: {h}" for name, h in p.embeddings)))
    pairs.append(("Version", f"textinv {__version__}"))
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in pairs))
    return "\n".join(lines)


def dream_command(p: GenerationParams) -> str:
    """InvokeAI 2.x's `Dream` chunk: the dream> command that makes this image again."""
    parts = [
        _double_quoted(invoke_prompt(p.prompt, p.negative)),
        f"-s {p.steps}",
        f"-S {p.seed}",
        f"-W {p.width}",
        f"-H {p.height}",
        f"-C {_num(p.cfg)}",
        f"-A {_invoke_sampler(p.sampler)}",
    ]
    if p.init_image is not None:
        parts += [f"-I {_double_quoted(p.init_image)}", f"-f {_num(p.strength)}"]
    return " ".join(parts)


def _double_quoted(text: str) -> str:
    """InvokeAI writes `"a photo of *" -s 50 ...`; its readers (and shlex) take backslash-escaped quotes."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def invoke_metadata(p: GenerationParams) -> dict:
    """InvokeAI 2.x's `sd-metadata` JSON. Its readers take the negative prompt from `[...]` in the prompt; its
    `model_hash` is the checkpoint's whole sha256, as InvokeAI 2.3 writes it (2.3.5.post2 ldm/invoke/args.py:1179,
    from ldm/invoke/model_manager.py:1190-1213)."""
    image = {
        "type": p.kind,
        "prompt": [{"prompt": invoke_prompt(p.prompt, p.negative), "weight": 1.0}],
        "negative_prompt": p.negative,
        "steps": p.steps,
        "cfg_scale": p.cfg,
        "seed": p.seed,
        "width": p.width,
        "height": p.height,
        "sampler": _invoke_sampler(p.sampler),
        "embeddings": [{"name": n, "hash": h} for n, h in p.embeddings],
    }
    if p.init_image is not None:
        image.update(init_image_path=p.init_image, strength=p.strength)
    meta = {
        "model": "stable diffusion",
        "model_weights": p.model,
        "app_id": "textinv",
        "app_version": __version__,
        "image": image,
    }
    if p.model_sha256:
        meta["model_hash"] = p.model_sha256
    return meta


def _invoke_sampler(a1111: str) -> str:
    from textinv.generation.sampling import SCHEDULERS

    for key, (_, _, name) in SCHEDULERS.items():
        if name == a1111:
            return key if key in ("ddim", "plms") else f"k_{key}"
    return a1111.lower()


def _num(x: float | None) -> str:
    return f"{x:g}"


_CHUNKS = {  # chunk -> (its text, why its readers would misread this prompt)
    "parameters": (a1111_parameters, a1111_misreads),
    "Dream": (dream_command, dream_misreads),
    "sd-metadata": (lambda p: json.dumps(invoke_metadata(p)), invokeai_misreads),
}


def left_out(p: GenerationParams) -> dict[str, str]:
    """chunk -> why it is left out of the PNG: its readers would read this prompt back wrong."""
    why = {name: misreads(p.prompt, p.negative) for name, (_, misreads) in _CHUNKS.items()}
    return {name: reason for name, reason in why.items() if reason}


def png_info(p: GenerationParams):
    """The PNG text chunks for `p`: each of the three that its readers read back exactly."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    skip = left_out(p)
    for name, (text, _) in _CHUNKS.items():
        if name not in skip:
            info.add_text(name, text(p))
    return info


def read_parameters(path: str | Path) -> dict[str, str]:
    """The A1111 `parameters` of a PNG as a dict: 'Prompt', 'Negative prompt', 'Steps', 'Seed', ... (strings)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            text = im.info.get("parameters")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        why = "" if str(path) in str(e) else f" ({first_line(e, 160)})"
        raise DataError(f"{path}: not a readable PNG{why}") from None
    if not isinstance(text, str):
        raise DataError(f"{path}: carries no generation parameters")
    *head, last = text.split("\n")
    out: dict[str, str] = {}
    prompt_lines = []
    for line in head:
        if line.startswith("Negative prompt: "):
            out["Negative prompt"] = line.removeprefix("Negative prompt: ")
        else:
            prompt_lines.append(line)
    out["Prompt"] = "\n".join(prompt_lines)
    for m in re.finditer(r'\s*([\w \-/]+): ("(?:\\.|[^"])*"|[^,]*)(?:,|$)', last):
        value = m.group(2)
        out[m.group(1).strip()] = _unquoted(value) if value.startswith('"') else value.strip()
    return out


def _unquoted(value: str) -> str:
    """A value AUTOMATIC1111 quoted (JSON string syntax); a malformed one is kept as written."""
    try:
        text = json.loads(value)
    except ValueError:
        return value
    return text if isinstance(text, str) else value
