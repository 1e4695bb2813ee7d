"""Which prompts each PNG metadata chunk can carry so that every reader gets them back exactly.

A chunk whose readers would split the prompt and negative prompt in the wrong place is left out of the PNG
(`misread` says why), rather than written to read back wrong. The rules come from the readers' own code; the
tests (tests/test_png_metadata.py) run the readers that install (sd-parsers, sd-prompt-reader) and parsers written
from the others' code over prompts full of quotes, brackets, colons and weights.

- AUTOMATIC1111 `parameters`: stable-diffusion-webui v1.10.1 modules/infotext_utils.py:254-267
  (`parse_generation_parameters` strips every line and starts the negative prompt at a line beginning
  "Negative prompt:"); sd-parsers 0.6 parsers/_automatic1111.py:30-31 (splits the text at any
  "Negative prompt:" and strips both parts); sd-prompt-reader 1.3.5 format/a1111.py:45-64 (the settings start at
  the first "\\nSteps:").
- InvokeAI `sd-metadata` (the prompt with the negative prompt as `[...]` after it): InvokeAI 2.3.5.post2
  ldm/invoke/conditioning.py:133-146 (every `\\[(.*?)\\]` is negative, and runs of spaces collapse); InvokeAI v6.13.8
  invokeai/frontend/install/import_images.py:359-375 (`split_prompt`: drops newlines, `\\[(.+?)\\]`, strips spaces
  and commas); sd-parsers 0.6 parsers/_invokeai/_variant_dream.py:82-106 (`\\[([^\\[]*)\\]`, strips " ,");
  sd-prompt-reader 1.3.5 format/invokeai.py:168-180 (`^(.*?)\\[(.*?)\\]$`, one line only).
- InvokeAI `Dream` (the dream> command line): as `sd-metadata`, and sd-parsers 0.6 _variant_dream.py:36 and
  sd-prompt-reader 1.3.5 format/invokeai.py:134 take the prompt up to the first `"` without unescaping, so it must
  hold no `"` or `\\`. InvokeAI 6.x reads `Dream` only when `sd-metadata` is missing (import_images.py:593-600) and
  then keeps the whole command as the prompt: `Dream` is written only beside `sd-metadata`.
"""

from __future__ import annotations

import re

NEGATIVE_LINE = "Negative prompt:"


def invoke_prompt(prompt: str, negative: str) -> str:
    """InvokeAI 2.x's one prompt string: the negative prompt in brackets after the prompt."""
    if not negative:
        return prompt
    return f"{prompt} [{negative}]" if prompt else f"[{negative}]"


def _bare(text: str) -> bool:
    """No space or comma at either end (the InvokeAI readers strip them)."""
    return text == text.strip() == text.strip(",")


def a1111_misreads(prompt: str, negative: str) -> str | None:
    """Why the `parameters` chunk would read back wrong, or None."""
    for name, text in (("prompt", prompt), ("negative prompt", negative)):
        if text != text.strip() or any(line != line.strip() for line in text.split("\n")):
            return f"the {name} or one of its lines starts or ends with a space or line break, which its readers strip"
        if NEGATIVE_LINE in text:
            return f"the {name} holds '{NEGATIVE_LINE}', where its readers start the negative prompt"
        if "\nSteps:" in text:
            return f"the {name} has a line starting 'Steps:', where sd-prompt-reader starts the settings"
    return None


def invokeai_misreads(prompt: str, negative: str) -> str | None:
    """Why the `sd-metadata` chunk (prompt and `[negative]` in one string) would read back wrong, or None."""
    if re.search(r"[\r\n]", prompt + negative):
        return "a line break, which InvokeAI 6 drops"
    if not _bare(prompt):
        return "the prompt starts or ends with a space or comma, which the InvokeAI readers strip"
    if not negative:
        return "the prompt holds [...], which InvokeAI reads as a negative prompt" if re.search(r"\[.*\]", prompt) else None
    if re.search(r"[\[\]]", negative):
        return "the negative prompt holds a bracket, and InvokeAI ends it at the first ]"
    if "[" in prompt:
        return "the prompt holds [, where InvokeAI starts the negative prompt"
    if not _bare(negative):
        return "the negative prompt starts or ends with a space or comma, which the InvokeAI readers strip"
    if "  " in prompt:
        return "the prompt holds two spaces in a row, which InvokeAI 2.3 makes one"
    return None


def dream_misreads(prompt: str, negative: str) -> str | None:
    """Why the `Dream` chunk would read back wrong, or None."""
    if re.search(r'["\\]', prompt + negative):
        return 'a " or \\, where sd-parsers and sd-prompt-reader end the prompt'
    return invokeai_misreads(prompt, negative)
