"""What the tools that load embeddings ask of a file beyond its layout: the token diffusers accepts, the file names
InvokeAI can trigger, and the two calls diffusers needs for an SDXL file. The format records use these; the tests
(tests/consumers.py) encode each tool's loading code and check the records against it.

Read from: diffusers 0.42.1 src/diffusers/loaders/textual_inversion.py; InvokeAI v6.13.8 (tag)
invokeai/app/util/ti_utils.py and invokeai/backend/model_manager/model_on_disk.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from textinv.formats import T5_TOOLS, T5_TRIGGERS
from textinv.formats.embedding import Embedding


class Conditional(NamedTuple):
    """A tool that loads a layout only sometimes: its trigger word, the condition in words, and a test of it; `step`
    is what else the tool needs then (a keyword argument, two calls), as code."""

    trigger: str
    condition: str
    holds: Callable[[Embedding], bool]
    step: str = ""


class Usage(NamedTuple):
    """How one tool loads one written file: the word that triggers it, and any step it needs first."""

    trigger: str
    step: str = ""

# diffusers `_retrieve_tokens_and_embeddings` (textual_inversion.py:233-237) refuses a token already in the
# tokenizer's vocabulary ("Token * already in tokenizer vocabulary"), and `_extend_tokens_and_embeddings`
# (:250-259) one whose `<token>_1` is. CLIP's vocabulary holds every single character and many words, so a
# placeholder such as `*` or `cat` is refused; a word in angle brackets is in no CLIP vocabulary.
_DIFFUSERS_TOKEN = re.compile(r"<[^<>\s|]+>")
# InvokeAI finds embeddings in a prompt with `<[a-zA-Z0-9., _-]+>` (ti_utils.py:11-15) and names an installed
# file after its stem (model_on_disk.py:26-29), so `<stem>` triggers only a stem made of those characters.
INVOKEAI_NAME = re.compile(r"[a-zA-Z0-9., _-]+")


def diffusers_accepts(token: str) -> bool:
    """Whether diffusers' `load_textual_inversion` takes `token` as a new word (not one CLIP already has)."""
    return _DIFFUSERS_TOKEN.fullmatch(token) is not None


def diffusers_token(emb: Embedding, path: Path) -> str:
    """The token diffusers should load `emb` under once written to `path`: its placeholder where diffusers accepts
    it, else `<stem>` (the file's, or the concept folder's, name)."""
    tok = emb.tokens[0].name
    if diffusers_accepts(tok):
        return tok
    stem = re.sub(r"[<>\s|]+", "_", path.stem).strip("_") or "embedding"
    return f"<{stem}>"


def invokeai_can_trigger(path: Path) -> bool:
    return INVOKEAI_NAME.fullmatch(path.stem) is not None


# What to run in diffusers for a file that holds one tensor per text encoder: `load_textual_inversion` refuses such
# a dict ("Loaded state dictionary is incorrect", textual_inversion.py:222-227), so each encoder's tensor goes in
# its own call with that encoder and its tokenizer (as `unload_textual_inversion`'s docstring shows).
SDXL_CALLS = (
    'pipe.load_textual_inversion(state["clip_l"], token="{dtoken}", text_encoder=pipe.text_encoder, '
    "tokenizer=pipe.tokenizer)\n"
    'pipe.load_textual_inversion(state["clip_g"], token="{dtoken}", text_encoder=pipe.text_encoder_2, '
    "tokenizer=pipe.tokenizer_2)"
)
SDXL_SAFETENSORS = 'from safetensors.torch import load_file\nstate = load_file("{file}")\n' + SDXL_CALLS
SDXL_PICKLE = 'import torch\nstate = torch.load("{file}", weights_only=True)\n' + SDXL_CALLS
# A file whose token diffusers refuses, or whose key is not the token (kohya's `emb_params`), loads with `token=`.
TOKEN_ARGUMENT = 'pipe.load_textual_inversion("{file}", token="{dtoken}")'




def _accepted(emb: Embedding) -> bool:
    return not emb.is_sdxl and diffusers_accepts(emb.tokens[0].name)


def _refused(emb: Embedding) -> bool:
    return not emb.is_sdxl and not diffusers_accepts(emb.tokens[0].name)


def _sdxl(emb: Embedding) -> bool:
    return emb.is_sdxl


def _diffusers(sdxl_step: str) -> tuple[Conditional, ...]:
    """How diffusers loads a layout whose one key (or A1111 `name`) is the placeholder: by that token when it
    accepts it, else with token=; an SDXL file in two calls."""
    return (
        Conditional("{dtoken}", "SDXL: two calls", _sdxl, sdxl_step),
        Conditional("{token}", "a `<word>` placeholder", _accepted),
        Conditional("{dtoken}", "another placeholder, with token=", _refused, TOKEN_ARGUMENT),
    )


DIFFUSERS_PICKLE = _diffusers(SDXL_PICKLE)
DIFFUSERS_SAFETENSORS = _diffusers(SDXL_SAFETENSORS)
# kohya's key is `emb_params`, which diffusers would take as the token: always pass token=
DIFFUSERS_EMB_PARAMS = (
    Conditional("{dtoken}", "SDXL: two calls", _sdxl, SDXL_SAFETENSORS),
    Conditional("{dtoken}", "with token=", lambda emb: not emb.is_sdxl, TOKEN_ARGUMENT),
)


# A concept folder (SD1.x/SD2.x only): diffusers finds learned_embeds.bin in it (load_textual_inversion_state_dicts)
DIFFUSERS_FOLDER = _diffusers("")[1:]


# FluxPipeline's `load_textual_inversion` (its TextualInversionLoaderMixin) takes one encoder per call, as for SDXL:
# clip_l into text_encoder, t5 into text_encoder_2 with tokenizer_2 (diffusers 0.42.1
# examples/advanced_diffusion_training/README_flux.md, "Inference" with `--enable_t5_ti`).
FLUX_CALLS = (
    'from safetensors.torch import load_file\nstate = load_file("{file}")\n'
    'pipe.load_textual_inversion(state["clip_l"], token="{dtoken}", text_encoder=pipe.text_encoder, '
    "tokenizer=pipe.tokenizer)\n"
    'pipe.load_textual_inversion(state["t5"], token="{dtoken}", text_encoder=pipe.text_encoder_2, '
    "tokenizer=pipe.tokenizer_2)"
)
_T5_STEPS = {("Flux.1", "diffusers"): FLUX_CALLS}


def t5_usage(layout: str, architecture: str) -> dict[str, Usage]:
    """tool -> how an SD3 or Flux.1 (`architecture`) embedding written in `layout` is triggered there: the tools
    `formats.T5_TOOLS` says load that layout, with the step each needs."""
    return {tool: Usage(T5_TRIGGERS[tool], _T5_STEPS.get((architecture, tool), ""))
            for tool, entry in T5_TOOLS[architecture].items() if isinstance(entry, tuple) and entry[0] == layout}
