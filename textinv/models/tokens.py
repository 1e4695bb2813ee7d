"""The placeholder's tokens: new tokenizer words, their initial vectors, and the spliced embedding table that makes
only those rows trainable."""

from __future__ import annotations

import re

import torch
from torch import nn

from textinv.errors import ConfigError, ModelError
from textinv.reporting import Reporter

# A placeholder is a prompt word where it stands alone: after the start or a space, before a space, punctuation or
# the end (`a photo of *, big` names `*`; `a*b` and `*x` do not).
_WORD_START, _WORD_END = r"(?<!\S)", r"(?=[\s,.;:!?]|$)"


def as_word(pattern: str) -> str:
    """The regex `pattern`, matched only where it stands as a whole prompt word; its groups keep their numbers."""
    return rf"{_WORD_START}(?:{pattern}){_WORD_END}"


class SplicedEmbedding(nn.Module):
    """The frozen token embedding, with ids >= `first_id` looked up in a separate float32 `learned` table."""

    def __init__(self, base: nn.Embedding, learned: torch.Tensor, first_id: int, columns: slice = slice(None)):
        super().__init__()
        self.base = base  # registered first, so `text_encoder.dtype` still reports the frozen weights' dtype
        # SDXL: one Parameter shared by both encoders' splices, each reading its own `columns` of it
        self.learned = learned if isinstance(learned, nn.Parameter) else nn.Parameter(learned.to(torch.float32))
        self.columns = columns
        self.first_id = first_id
        self.embedding_dim = base.embedding_dim

    @property
    def weight(self) -> torch.Tensor:  # some callers read `.weight` (dims, dtype, device)
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        new = ids >= self.first_id
        out = self.base(torch.where(new, torch.zeros_like(ids), ids))
        rows = self.learned[(ids - self.first_id).clamp(min=0)][..., self.columns]
        return torch.where(new.unsqueeze(-1), rows.to(out.dtype), out)


def pool_at_end_of_text(pipe) -> None:
    """Make every CLIP text encoder of `pipe` pool its output at the end-of-text token, whatever ids the prompt
    holds. Stable Diffusion's published CLIP configs say `eos_token_id: 2`, for which transformers pools at the
    highest token id (transformers 5.25 models/clip/modeling_clip.py:551-560, kept from before its PR #24773): with
    a placeholder added to the tokenizer that is the placeholder's position, so SDXL's `text_embeds`, SD3's pooled
    vector and Flux.1's would be read off the placeholder. ComfyUI pools at the last attended token, the end of text
    (comfy/clip_model.py:133-136), and AUTOMATIC1111 keeps the original ids (the end-of-text one is the highest);
    setting the real id makes transformers take its first position (modeling_clip.py:561-570), in training and in
    generation alike."""
    for tok_name, te_name in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
        encoder = getattr(pipe, te_name, None)
        text_model = getattr(encoder, "text_model", encoder)  # the module that pools (WithProjection wraps one)
        eos = getattr(getattr(pipe, tok_name, None), "eos_token_id", None)
        if text_model is not None and getattr(text_model, "eos_token_id", None) == 2 and eos not in (None, 2):
            text_model.eos_token_id = eos


def replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` wherever `old` sits inside `root`, and wherever a twin of it does: another embedding table holding
    the very same weight (transformers 5's T5EncoderModel looks tokens up in `encoder.embed_tokens`, a module of its
    own tied to `shared`, which `get_input_embeddings` returns). (transformers 5's `set_input_embeddings` on
    CLIPTextModel sets an attribute the forward pass never reads, so the swap is done by identity here.) Undoing it
    puts `old` back in every place, the twins' too: the same weight, looked up the same way."""

    def is_old(child: nn.Module) -> bool:
        return child is old or (isinstance(child, nn.Embedding) and isinstance(old, nn.Embedding)
                                and child.weight is old.weight)

    places = [(m, name) for m in root.modules() for name, child in m.named_children() if is_old(child) and m is not new]
    if not places:
        raise ModelError("cannot find the token-embedding table in this text encoder")
    for module, name in places:
        setattr(module, name, new)


def internal_token_names(index: int, n: int) -> list[str]:
    """The tokenizer words placeholder number `index` trains as. Placeholders are swapped for these in every prompt,
    because a placeholder such as `*` is already in CLIP's byte vocabulary and cannot be added as a new token."""
    return [f"<textinv-{index}-{k}>" for k in range(n)]


def add_new_tokens(tokenizer, names: list[str], first_id: int) -> list[int]:
    """Add `names` to the tokenizer and check that each became one new id at or after `first_id`."""
    tokenizer.add_tokens(names)
    ids = tokenizer(" ".join(names), add_special_tokens=False).input_ids
    if len(ids) != len(names) or min(ids) < first_id or len(set(ids)) != len(ids):
        raise ModelError(f"this tokenizer cannot take new tokens {names} as single words; textinv cannot train it")
    return ids


def init_vectors(tokenizer, table: torch.Tensor, word: str, n: int) -> tuple[torch.Tensor, list[str]]:
    """Vectors for one placeholder from its init word's token embeddings, spread over `n` vectors in turn."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ConfigError(f"init word {word!r} gives no tokens; pass a plain word such as cat")
    pieces = tokenizer.convert_ids_to_tokens(ids)
    # as AUTOMATIC1111: vector i takes token i*len/n, so 2 tokens over 4 vectors -> a a b b
    rows = [ids[i * len(ids) // n] for i in range(n)]
    return table[rows].detach().to(torch.float32).clone(), pieces


def add_placeholders(tokenizer, table: torch.Tensor, p, first_id: int, reporter: Reporter):
    """Add each placeholder's tokens to the tokenizer (`p` is the personalization config). Returns the initial
    vectors [n_total, dim] and, for each placeholder, the token text that stands for it in prompts."""
    vectors = []
    expansions: dict[str, str] = {}
    for i, (placeholder, word) in enumerate(zip(p.placeholder_strings, p.initializer_words, strict=True)):
        if placeholder.isalnum() and len(tokenizer(placeholder, add_special_tokens=False).input_ids) == 1:
            raise ConfigError(f"placeholder {placeholder!r} is a word the model already knows; pick a new one, "
                              f"e.g. '<{placeholder}>'")
        names = internal_token_names(i, p.num_vectors_per_token)
        add_new_tokens(tokenizer, names, first_id)
        vecs, pieces = init_vectors(tokenizer, table, word, p.num_vectors_per_token)
        if len(pieces) > 1:
            used = min(len(pieces), p.num_vectors_per_token)
            reporter.message(
                f"init word {word!r} is {len(pieces)} tokens ({' '.join(x.removesuffix('</w>') for x in pieces)}); "
                f"{used} of them initialise the {p.num_vectors_per_token} vector(s) of {placeholder!r} in turn"
                + ("" if used == len(pieces) else "; raise num_vectors_per_token to use them all")
            )
        vectors.append(vecs)
        expansions[placeholder] = " ".join(names)
    return torch.cat(vectors), expansions


def expand_placeholders(text: str, expansions: dict[str, str]) -> str:
    """Replace each placeholder (as a whole word) by all of its vector tokens: `*` -> `* *_1 *_2`."""
    if not expansions:
        return text
    pattern = "|".join(re.escape(p) for p in sorted(expansions, key=len, reverse=True))
    return re.sub(as_word(f"({pattern})"), lambda m: expansions[m.group(1)], text)
