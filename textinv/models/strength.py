"""`textinv convert IN OUT --strength S --model M`: an embedding blended toward its init word.

Each vector becomes init + S x (learned - init), where init is the init word's token vectors in the model, spread
over the placeholder's vectors as training starts them (`models.tokens.init_vectors`): S = 0 gives the init
word's vectors, S = 1 the learned ones, 0.6 a vector 60% of the way from the init word to the learned one. This
acts on the input vectors, before the text encoder, and so differs from a prompt weight `(word:0.6)`, which scales
the text encoder's outputs (generation/weighting.py); a blend keeps the word's norm near the vocabulary's and
gives the rest of the prompt back its say (bench/learning.py measures both on the toy model).

The init word comes from the file's metadata (`.safetensors` written by textinv record it) or `--init-word`; the
vectors from `--model` (SDXL: both encoders). The file written records the strength and the word it was blended
toward in its metadata.
"""

from __future__ import annotations

import copy
import math

from textinv.errors import ModelError, UsageError
from textinv.formats.embedding import Embedding


def check_strength(strength: float, emb: Embedding, *, model: str | None, init_word: str | None) -> None:
    """UsageError, before any model loads, when the blend cannot be made."""
    if not math.isfinite(strength) or not 0.0 <= strength <= 1.0:
        raise UsageError(f"--strength {strength}: must be between 0 (the init word) and 1 (as learned)")
    if model is None:
        raise UsageError("--strength blends toward the init word's vectors in a model; pass --model (a hub id, "
                         "folder, checkpoint or toy: the model the embedding was trained on)")
    missing = [t.name for t in emb.tokens if not (init_word or emb.init_words.get(t.name))]
    if missing:
        raise UsageError(f"the file does not record the init word of {', '.join(missing)}; pass --init-word WORD")


def blend_toward_init(emb: Embedding, strength: float, pipe, *, init_word: str | None = None) -> Embedding:
    """A copy of `emb` with every vector at `strength` of the way from its init word's vectors (in `pipe`'s text
    encoders) to the learned ones."""
    from textinv.models.tokens import init_vectors

    out = copy.deepcopy(emb)
    encoders = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
    words: list[str] = []
    for tok in out.tokens:
        word = init_word or emb.init_words[tok.name]
        words.append(word)
        for k, (tokenizer, encoder) in enumerate(encoders):
            learned = tok.vectors if k == 0 else tok.vectors_2
            if learned is None:
                continue
            table = encoder.get_input_embeddings().weight
            if learned.shape[1] != table.shape[1]:
                raise ModelError(f"{tok.name} has {learned.shape[1]}-dim vectors but the model's text encoder has "
                                 f"{table.shape[1]}; pass the --model it was trained on")
            init, _ = init_vectors(tokenizer, table, word, learned.shape[0])
            blended = init.cpu() + strength * (learned.float() - init.cpu())
            if k == 0:
                tok.vectors = blended
            else:
                tok.vectors_2 = blended
        out.init_words[tok.name] = word
    out.extra = {**out.extra, "strength": f"{strength:g}", "strength_toward": ", ".join(dict.fromkeys(words))}
    return out


def with_strength(emb: Embedding, strength: float, *, model: str | None, init_word: str | None = None) -> Embedding:
    """Check, load `model` and blend (see the module doc)."""
    from textinv.models.loading import load_pipeline

    check_strength(strength, emb, model=model, init_word=init_word)
    return blend_toward_init(emb, strength, load_pipeline(model), init_word=init_word)
