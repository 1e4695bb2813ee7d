"""ComfyUI's key for a T5-XXL part: a file's `t5xxl` tensor goes into the T5 encoder, `clip_l` and `clip_g` into
the CLIPs (comfy/sd1_clip.py:391-460 `load_embed` takes `embed[embed_key]`, else the file's first tensor; the T5
tokenizers pass `embedding_key='t5xxl'`: comfy/text_encoders/sd3_clip.py:37, flux.py:12; Comfy-Org/ComfyUI
a125cd8). A part of the wrong width is dropped with a log line (sd1_clip.py:230-238): a OneTrainer file's `t5`
part is not `t5xxl`, so ComfyUI's T5 takes the file's first tensor (clip_g or clip_l) and drops it.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from textinv.atomic import atomic_write
from textinv.formats.common import COMFYUI_T5_KEY, encoder_parts, safetensors_metadata, single_token
from textinv.formats.diffusers import FORMATS as DIFFUSERS_FORMATS
from textinv.formats.diffusers import write_safetensors
from textinv.formats.embedding import Embedding
from textinv.formats.onetrainer import has_t5_part, read_parts
from textinv.formats.record import Format


def _write(emb: Embedding, path: Path) -> None:
    if emb.architecture is None:  # CLIP-only: what `--for comfyui` writes for those
        write_safetensors(emb, path)
        return
    tok = single_token(emb, "comfyui-t5")
    data = encoder_parts(tok, t5_key=COMFYUI_T5_KEY)
    atomic_write(path, lambda tmp: save_file(data, str(tmp), metadata=safetensors_metadata(emb)))


_AS_DIFFUSERS = next(f for f in DIFFUSERS_FORMATS if f.name == "diffusers-safetensors")

FORMATS = [
    Format(
        name="comfyui-t5",
        description="ComfyUI SD3/Flux.1 .safetensors: clip_l [+ clip_g] + t5xxl (CLIP-only ones as "
                    "diffusers-safetensors)",
        recognise=lambda data, metadata, source: has_t5_part(data, COMFYUI_T5_KEY),
        read=read_parts("comfyui-t5", COMFYUI_T5_KEY),
        write=_write,
        extension=".safetensors",
        # CLIP-only, it is a diffusers-safetensors file and loads where that does; SD3, Flux.1: formats.T5_TOOLS
        loads_in=_AS_DIFFUSERS.loads_in,
        loads_if=_AS_DIFFUSERS.loads_if,
    ),
]
