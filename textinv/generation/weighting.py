"""Prompt weights and long prompts as AUTOMATIC1111 users type them: `(word:0.7)`, `(word)`, `[word]`, `BREAK`,
and prompts longer than the text encoder's 77 tokens.

The rules are AUTOMATIC1111's (stable-diffusion-webui, modules/prompt_parser.py `parse_prompt_attention`,
modules/sd_hijack_clip.py `FrozenCLIPEmbedderWithCustomWordsBase`, modules/sd_emphasis.py `EmphasisOriginal`, its
default), which ComfyUI's `(word:weight)` follows too:

- `(text)` multiplies the weight of `text` by 1.1, `[text]` by 1/1.1, `(text:w)` by w; nesting multiplies;
  `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the characters themselves; an unclosed bracket runs to the end.
- The prompt is tokenized piece by piece and cut into chunks of 75 tokens (`BREAK` ends a chunk early); each chunk
  gets its start and end tokens (77 in all) and goes through the text encoder on its own; the chunks' outputs are
  concatenated along the token axis, so the UNet attends to every token of a long prompt.
- A weight scales the text encoder's *output* vectors of its tokens (not the learned input vectors: for that, see
  `textinv convert --strength`); then the whole chunk is rescaled so that its mean is what it was before
  weighting (skipped when that mean is zero to float precision, as with the toy model's text encoder, whose
  last layer norm has no bias: the ratio of two rounding errors would scale the prompt at random). So `(*:0.7)`
  makes the placeholder's tokens count for less against the rest of the prompt.
- A multi-vector placeholder is expanded to all its tokens first (diffusers' `maybe_convert_prompt`), and they
  share its weight.

Where AUTOMATIC1111 differs: it moves the words after a comma near the end of a full chunk into the next one
(`comma_padding_backtrack`) and keeps an embedding's vectors in one chunk; here chunks are cut at 75 tokens.
SDXL: both encoders' chunks (their penultimate layers, as diffusers and AUTOMATIC1111 take them) side by side,
each encoder's weighted on its own; the pooled text embedding is the second encoder's for the first chunk.

A prompt with no brackets or BREAK that fits in 75 tokens goes to the pipeline as text, as before.
"""

from __future__ import annotations

import re

import torch

ROUND = 1.1
SQUARE = 1 / 1.1
CHUNK = 75  # tokens per chunk, between the start and end tokens
BREAK = None  # the weight that stands for a BREAK in parse_weights' output

_TOKEN = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|   # escapes, and a lone backslash
\(|\[|                        # openings
:\s*([+-]?[.\d]+)\s*\)|       # the end of (text:weight)
\)|]|                         # closings
[^\\()\[\]:]+|                # text
:
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_weights(text: str) -> list[tuple[str, float | None]]:
    """The prompt as (text, weight) pieces, neighbours with the same weight merged; a BREAK is ("BREAK", None).

    >>> parse_weights("a (red:1.5) [cat]")
    [('a ', 1.0), ('red', 1.5), (' ', 1.0), ('cat', 0.9090909090909091)]
    """
    pieces: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if piece[1] is not BREAK:
                piece[1] *= factor

    for m in _TOKEN.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:] or "\\", 1.0])
        elif token == "(":
            rounds.append(len(pieces))
        elif token == "[":
            squares.append(len(pieces))
        elif weight is not None and rounds:
            multiply(rounds.pop(), float(weight))
        elif token == ")" and rounds:
            multiply(rounds.pop(), ROUND)
        elif token == "]" and squares:
            multiply(squares.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    pieces.append(["BREAK", BREAK])
                pieces.append([part, 1.0])
    for start in rounds:
        multiply(start, ROUND)
    for start in squares:
        multiply(start, SQUARE)
    merged: list[list] = []
    for text_, w in pieces:
        if merged and w is not BREAK and merged[-1][1] is not BREAK and merged[-1][1] == w:
            merged[-1][0] += text_
        elif text_ or w is BREAK:
            merged.append([text_, w])
    return [(t, w) for t, w in merged] or [("", 1.0)]


def _encoders(pipe) -> list[tuple]:
    """(tokenizer, text encoder, penultimate layer?) of each text encoder the pipeline conditions on."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return [(pipe.tokenizer, pipe.text_encoder, True), (pipe.tokenizer_2, pipe.text_encoder_2, True)]
    return [(pipe.tokenizer, pipe.text_encoder, False)]


def _token_ids(pipe, tokenizer, text: str) -> list[int]:
    """`text`'s token ids without start/end, with multi-vector placeholders expanded as diffusers does."""
    convert = getattr(pipe, "maybe_convert_prompt", None)
    if convert is not None:
        text = convert(text, tokenizer)
    return tokenizer(text, add_special_tokens=False).input_ids


def chunks(pipe, tokenizer, prompt: str) -> list[tuple[list[int], list[float]]]:
    """The prompt as 77-token chunks: (token ids, weight per token), start and end tokens (weight 1) included."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    out: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []

    def close() -> None:
        fill = CHUNK - len(ids)
        out.append(([bos, *ids, eos] + [pad] * fill, [1.0, *weights, 1.0] + [1.0] * fill))
        ids.clear()
        weights.clear()

    for text, weight in parse_weights(prompt):
        if weight is BREAK:
            close()
            continue
        for token in _token_ids(pipe, tokenizer, text):
            if len(ids) == CHUNK:
                close()
            ids.append(token)
            weights.append(weight)
    if ids or not out:
        close()
    return out


def needs_weighting(pipe, prompt: str) -> bool:
    """True when the prompt has weights or a BREAK, or is longer than one chunk for any encoder."""
    if parse_weights(prompt) != [(prompt, 1.0)]:
        return True
    return any(len(_token_ids(pipe, tok, prompt)) > CHUNK for tok, _, _ in _encoders(pipe))


@torch.no_grad()
def _encode(text_encoder, penultimate: bool, chunk_list, n_chunks: int, empty) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted hidden states [1, 77 x n_chunks, width] of the chunks (padded with `empty` chunks), and the
    pooled output of the first chunk."""
    device = text_encoder.device
    zs, pooled = [], None
    for ids, weights in chunk_list + [empty] * (n_chunks - len(chunk_list)):
        out = text_encoder(torch.tensor([ids], device=device), output_hidden_states=penultimate)
        z = out.hidden_states[-2] if penultimate else out[0]
        if pooled is None:
            pooled = out[0]
        w = torch.tensor(weights, device=device, dtype=z.dtype)[None, :, None]
        before, scale = z.mean(), z.abs().mean()
        z = z * w
        after = z.mean()  # AUTOMATIC1111's "Original" emphasis: the chunk keeps its mean, unless that mean is zero
        # to float precision (a last layer norm without bias, as the toy model's): then the ratio would be noise
        zs.append(z * (before / after) if min(before.abs(), after.abs()) > 1e-4 * scale else z)
    return torch.cat(zs, dim=1), pooled


def encode_prompts(pipe, prompt: str, negative: str) -> dict:
    """The pipeline's `prompt_embeds` / `negative_prompt_embeds` (and SDXL's pooled ones) for a weighted or long
    prompt and its negative, with as many chunks each."""
    encoders = _encoders(pipe)
    per_encoder = [(chunks(pipe, tok, prompt), chunks(pipe, tok, negative), chunks(pipe, tok, "")[0])
                   for tok, _, _ in encoders]
    n = max(max(len(c), len(u)) for c, u, _ in per_encoder)
    cond, uncond = [], []
    for (_, text_encoder, penultimate), (c, u, empty) in zip(encoders, per_encoder, strict=True):
        cond.append(_encode(text_encoder, penultimate, c, n, empty))
        uncond.append(_encode(text_encoder, penultimate, u, n, empty))
    dtype = pipe.unet.dtype
    kwargs = {"prompt_embeds": torch.cat([z for z, _ in cond], dim=-1).to(dtype),
              "negative_prompt_embeds": torch.cat([z for z, _ in uncond], dim=-1).to(dtype)}
    if len(encoders) > 1:
        kwargs["pooled_prompt_embeds"] = cond[-1][1].to(dtype)
        kwargs["negative_pooled_prompt_embeds"] = uncond[-1][1].to(dtype)
        if not negative and getattr(pipe.config, "force_zeros_for_empty_prompt", False):  # as the SDXL pipeline
            kwargs["negative_prompt_embeds"] = torch.zeros_like(kwargs["negative_prompt_embeds"])
            kwargs["negative_pooled_prompt_embeds"] = torch.zeros_like(kwargs["negative_pooled_prompt_embeds"])
    return kwargs


def prompt_arguments(pipe, prompt: str, negative: str) -> dict:
    """What the pipeline call takes for the prompt: the text itself, or the embeddings when the prompt or the
    negative prompt has weights or is too long for one chunk. SD3 and Flux.1 pipelines (a transformer, T5) take
    the text, each multi-vector placeholder written out as its tokens; weights are refused there."""
    if getattr(pipe, "transformer", None) is not None:
        from textinv.errors import UsageError
        from textinv.models.embeddings import prompt_for

        if any(parse_weights(text) != [(text, 1.0)] for text in (prompt, negative) if text):
            raise UsageError("prompt weights such as (word:0.7) and BREAK work with SD1.x, SD2.x and SDXL "
                             "models only; write the prompt without them for SD3 and Flux.1")
        return {"prompt": prompt_for(pipe, prompt), "negative_prompt": prompt_for(pipe, negative) if negative else None}
    if needs_weighting(pipe, prompt) or (negative and needs_weighting(pipe, negative)):
        return encode_prompts(pipe, prompt, negative)
    return {"prompt": prompt, "negative_prompt": negative or None}
