"""PNG metadata readers that do not install here, written from their code, for tests/test_png_metadata.py.

Each returns (prompt, negative prompt) as that tool would read them from one chunk; each follows the lines cited.
"""

from __future__ import annotations

import json
import re
import shlex

# --- AUTOMATIC1111 stable-diffusion-webui v1.10.1 (tag, commit 82a973c04367123ae98bd9abdf80d9eda9b910e2) ---------
# modules/infotext_utils.py:16 `re_param_code`, :63-70 `unquote`, :234-300 `parse_generation_parameters` (the part
# before the prompt styles, which a webui without saved styles leaves alone).
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    prompt, negative, done_with_prompt = "", "", False
    *lines, lastline = text.strip().split("\n")
    if len(A1111_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    settings = {}
    for k, v in A1111_PARAM.findall(lastline):
        if v[0] == '"' and v[-1] == '"':
            try:
                v = json.loads(v)
            except ValueError:
                pass
        settings[k] = v
    return prompt, negative, settings


# --- InvokeAI 2.3.5.post2 (tag) ------------------------------------------------------------------------------------
# ldm/invoke/conditioning.py:133-146 `split_prompt_to_positive_and_negative`: every [...] is negative, joined with
# spaces; the prompt keeps the rest with runs of spaces made one (its prompt parser, compel, then ignores the space
# the removed [...] leaves at either end, so the positive prompt is compared stripped).


def invokeai23_split(prompt_string: str) -> tuple[str, str]:
    unconditionals = re.findall(r"\[(.*?)\]", prompt_string)
    if not unconditionals:
        return prompt_string, ""
    cleaned = re.sub(" +", " ", re.sub(r"\[(.*?)\]", " ", prompt_string))
    return cleaned.strip(), " ".join(unconditionals)


def invokeai23_sd_metadata(meta: dict) -> tuple[str, str]:
    """ldm/invoke/args.py:1275-1310 `metadata_loads` and `repack_prompt`: the prompt list, one entry as it is."""
    prompts = meta["image"]["prompt"]
    text = ",".join(f"{x['prompt']}:{x['weight']}" for x in prompts) if len(prompts) > 1 else prompts[0]["prompt"]
    return invokeai23_split(text)


def invokeai23_dream(command: str) -> tuple[str, str]:
    """ldm/invoke/args.py:209-237 `Args.parse_cmd`: a command starting with `"` is split with shlex."""
    if command.startswith('"'):
        prompt = shlex.split(command, comments=True)[0]
    else:
        match = re.match(r"^(.+?)\s(--?[a-zA-Z].+)", command)
        prompt = match.group(1) if match else command
    return invokeai23_split(prompt)


# --- InvokeAI v6.13.8 (tag) invokeai/frontend/install/import_images.py ---------------------------------------------
# :359-375 `split_prompt`; :284-312 `parse_meta_tag_sd_metadata`; :262-282 `parse_meta_tag_dream`; :593-600 picks
# sd-metadata when present, else Dream.


def invokeai6_split(raw_prompt: str) -> tuple[str, str]:
    search = raw_prompt.replace("\r", "").replace("\n", "")
    matches = re.findall(r"\[(.+?)\]", search)
    if not matches:
        return search.strip(), ""
    if len(matches) == 1:
        negative = matches[0].strip().strip(",")
    else:
        negative = "".join(f"({m.strip().strip(',')})" for m in matches)
    return re.sub(r"(\[.+?\])", "", search).strip(), negative


def invokeai6_png(chunks: dict[str, str]) -> tuple[str, str] | None:
    if "sd-metadata" in chunks:
        raw = json.loads(chunks["sd-metadata"])["image"]["prompt"]
        return invokeai6_split(raw[0]["prompt"] if isinstance(raw, list) else raw)
    if "Dream" in chunks:
        return invokeai6_split(re.sub(r"(-S\s*\d+)", "", chunks["Dream"]))
    return None
