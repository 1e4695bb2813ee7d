"""The generation metadata textinv writes into each PNG, in the three layouts readers look for.

`parameters` is AUTOMATIC1111's text (read by the webui's PNG Info, sd-parsers, sd-prompt-reader, civitai),
`Dream` InvokeAI 2.x's dream> command line, `sd-metadata` InvokeAI 2.x's JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from textinv import __version__
from textinv.errors import DataError, first_line
from textinv.hashing import model_hash
from textinv.models.source import SINGLE_FILE_SUFFIXES

if TYPE_CHECKING:
    from textinv.generation.sampling import GenerationParams


def checkpoint_hash(model: str) -> str | None:
    """AUTOMATIC1111's `Model hash` for a single-file checkpoint; None for a hub id or a diffusers folder, which
    have no such hash."""
    path = Path(model)
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES or not path.is_file():
        return None
    return model_hash(path)


def a1111_parameters(p: GenerationParams) -> str:
    """AUTOMATIC1111's `parameters` text: prompt, `Negative prompt: ...`, then one line of `Key: value` pairs."""
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
    model_hash = checkpoint_hash(p.model)
    if model_hash:
        pairs.append(("Model hash", model_hash))
    pairs.append(("Model", p.model))
    if p.strength is not None:
        pairs.append(("Denoising strength", _num(p.strength)))
    if p.embeddings:
        # A1111 quotes a value holding commas or colons, as its `TI hashes: "name: hash, name2: hash2"` does
        pairs.append(("TI hashes", json.dumps(", ".join(f"{name}: {h}" for name, h in p.embeddings))))
    pairs.append(("Version", f"textinv {__version__}"))
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs))
    return "\n".join(lines)


def dream_command(p: GenerationParams) -> str:
    """InvokeAI 2.x's `Dream` chunk: the dream> command that makes this image again."""
    prompt = f"{p.prompt} [{p.negative}]" if p.negative else p.prompt
    parts = [
        _double_quoted(prompt),
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
    """InvokeAI 2.x's `sd-metadata` JSON. Its readers take the negative prompt from `[...]` in the prompt."""
    prompt = f"{p.prompt} [{p.negative}]" if p.negative else p.prompt
    image = {
        "type": p.kind,
        "prompt": [{"prompt": prompt, "weight": 1.0}],
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
    model_hash = checkpoint_hash(p.model)
    if model_hash:
        meta["model_hash"] = model_hash
    return meta


def _invoke_sampler(a1111: str) -> str:
    from textinv.generation.sampling import SCHEDULERS

    for key, (_, _, name) in SCHEDULERS.items():
        if name == a1111:
            return key if key in ("ddim", "plms") else f"k_{key}"
    return a1111.lower()


def _num(x: float | None) -> str:
    return f"{x:g}"


def png_info(p: GenerationParams):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(p))
    info.add_text("Dream", dream_command(p))
    info.add_text("sd-metadata", json.dumps(invoke_metadata(p)))
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
