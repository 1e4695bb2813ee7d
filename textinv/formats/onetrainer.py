"""OneTrainer's embedding files (modules/modelSaver/*/*EmbeddingSaver.py, Nerogar/OneTrainer 23df383): one tensor
per text encoder in a .safetensors, no metadata: `emp_params` (sic) for SD1.x/SD2.x, `clip_l` + `clip_g` for
SDXL, `clip_l` + `clip_g` + `t5` for SD3/3.5 and `clip_l` + `t5` for Flux.1 (StableDiffusion3EmbeddingSaver.py:28-33,
FluxEmbeddingSaver.py:28-31). It reads them back by those keys (modelSetup/BaseStableDiffusionSetup.py:89,
BaseStableDiffusion3Setup.py:98-100, BaseFluxSetup.py:86-87). diffusers' advanced Flux script writes the same
`{clip_l, t5}` (examples/advanced_diffusion_training/README_flux.md: `state_dict["t5"]`).
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from textinv.atomic import atomic_write
from textinv.formats.common import (
    T5_KEY,
    Source,
    encoder_parts,
    ours,
    placeholder,
    safetensors_metadata,
    single_token,
    token,
    with_metadata,
)
from textinv.formats.consumers import DIFFUSERS_EMB_PARAMS, Conditional
from textinv.formats.embedding import Embedding
from textinv.formats.record import Format

SD_KEY = "emp_params"  # OneTrainer's SD1.x/SD2.x key, spelt as its saver spells it (StableDiffusionEmbeddingSaver.py:29)


def has_t5_part(data, key: str) -> bool:
    """A multi-encoder file whose T5 part is under `key` (beside its clip_l part)."""
    return isinstance(data, dict) and key in data and "clip_l" in data


def read_parts(fmt: str, t5_key: str):
    """The reader of a {clip_l, [clip_g], <t5_key>} file: one token named by our metadata or the file's stem."""

    def read(data, metadata, source: Source) -> Embedding:
        found = ours(metadata, source.path)
        name = placeholder(found, source)
        tok = token(name, data["clip_l"], source.path, data.get("clip_g"), data[t5_key])
        return with_metadata(Embedding([tok], source_format=fmt), found)

    return read


def _read_sd(data, metadata, source: Source) -> Embedding:
    found = ours(metadata, source.path)
    emb = Embedding([token(placeholder(found, source), data[SD_KEY], source.path)], source_format="onetrainer")
    return with_metadata(emb, found)


def _write(emb: Embedding, path: Path) -> None:
    tok = single_token(emb, "onetrainer")
    data = encoder_parts(tok) if emb.multi_encoder else {SD_KEY: tok.vectors.contiguous().clone()}
    atomic_write(path, lambda tmp: save_file(data, str(tmp), metadata=safetensors_metadata(emb)))


def _recognise(data, metadata, source: Source) -> bool:
    return has_t5_part(data, T5_KEY) or (isinstance(data, dict) and set(data) == {SD_KEY})


FORMATS = [
    Format(
        name="onetrainer",
        description="OneTrainer .safetensors: emp_params (SD1.x/SD2.x), clip_l + clip_g (SDXL), clip_l + clip_g + "
                    "t5 (SD3), clip_l + t5 (Flux.1)",
        recognise=_recognise,
        read=lambda data, metadata, source: (read_parts("onetrainer", T5_KEY) if T5_KEY in data else _read_sd)(
            data, metadata, source),
        write=_write,
        extension=".safetensors",
        # a CLIP-only file (emp_params, or SDXL's clip_l + clip_g) is what the other tools take from a one-tensor or
        # SDXL safetensors (tests/consumers.py: each tool's loading code); SD3 and Flux.1: formats.T5_TOOLS
        loads_in={"a1111": "{stem}", "comfyui": "embedding:{stem}", "kohya": "{stem}"},
        loads_if={"onetrainer": Conditional("{token}", "as the embedding's placeholder in OneTrainer, whose "
                                            "default is <embedding>", lambda emb: True),
                  "diffusers": DIFFUSERS_EMB_PARAMS,  # the key is not the token: token= always
                  "invokeai": Conditional("<{stem}>", "SDXL only", lambda emb: emb.is_sdxl)},
    ),
]
