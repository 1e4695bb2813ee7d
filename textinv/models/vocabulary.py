"""`textinv inspect FILE --model M`: an embedding's vectors against the model's own token vocabulary.

For each vector: its norm beside the vocabulary's (median, and the percentile of the vocabulary it exceeds), the
vocabulary tokens nearest to it by cosine, and its cosine to the init word when the file records one. A norm far
from the vocabulary's (more than OUTLIER_FACTOR times the median, or under its 1/OUTLIER_FACTOR) is the usual
cause of an embedding that overpowers the prompt (or does nothing), and gets a warning (`norm_warning`). The
demo's embedding (3.5x) draws its concept but followed 0 of 16 colour edits; on real SD1.x files, where the
vocabulary's median is about 0.39, most trained embeddings are above the factor (tests/test_vocabulary.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from textinv.errors import ModelError
from textinv.models.loading import text_encoders

OUTLIER_FACTOR = 3.0
NEAREST = 5


def inspect_files(paths: Iterable[str | Path], model: str | None = None, *, raise_errors: bool = False,
                  on_load: Callable[[], None] | None = None) -> Iterator[dict]:
    """`textinv inspect [--model M]`: each file described, and with `model` checked against its vocabulary. What
    the files and the model's own files show comes first: the model exists, and each embedding's family and widths
    fit it; the model then loads once, only when some file fits it (a load error ends the command), `on_load()`
    called just before (the command line quiets other libraries and says what loads)."""
    from textinv.formats.edit import describe_files, describe_read, read_files
    from textinv.formats.families import check_fits
    from textinv.models.loading import load_pipeline
    from textinv.models.peek import check_model

    if model is None:
        yield from describe_files(paths, raise_errors=raise_errors)
        return
    dims = check_model(model)

    def fits(path: Path, emb) -> None:
        for tok in emb.tokens if dims is not None else ():
            check_fits(path, tok.name, tok.widths, dims)

    read = read_files(paths, fits=fits, raise_errors=raise_errors)
    pipe = None
    if any(r.embedding is not None for r in read):
        if on_load is not None:
            on_load()
        pipe = load_pipeline(model)
    yield from describe_read(read, check=lambda emb: diagnose(emb, pipe), raise_errors=raise_errors)


def diagnose(emb, pipe, *, nearest: int = NEAREST) -> dict:
    """{"model", "tokens": [{"name", "encoder", "vocab_median_norm", "vectors": [...]}], "warnings": [...]}."""
    out: dict = {"model": pipe.textinv.name, "tokens": [], "warnings": []}
    for tok in emb.tokens:
        init_word = emb.init_words.get(tok.name)
        for key, name, tokenizer, encoder in text_encoders(pipe):
            vectors = tok.parts.get(key)
            if vectors is None:
                continue
            # T5-XXL's table has rows past its tokenizer (32128 for 32100 tokens): the vocabulary is the tokenizer's
            table = encoder.get_input_embeddings().weight.detach().float().cpu()[:len(tokenizer)]
            if vectors.shape[1] != table.shape[1]:
                raise ModelError(f"{tok.name} has {vectors.shape[1]}-dim vectors but the model's {name} has "
                                 f"{table.shape[1]}; pass the --model it was trained for")
            entry = _diagnose_vectors(tok.name, vectors.float(), table, tokenizer, init_word, nearest)
            entry["encoder"] = name
            out["tokens"].append(entry)
            out["warnings"] += entry.pop("warnings")
    return out


def norm_warning(what: str, norm: float, median: float, percentile: float) -> str | None:
    """The warning for a vector whose norm is more than OUTLIER_FACTOR times the vocabulary's median (or under
    1/OUTLIER_FACTOR of it), in what it means for the user and with the remedies textinv offers; None otherwise."""
    ratio = norm / median if median else float("inf")
    figure = f"{what} has norm {norm:.3g}, {ratio:.1f}x the vocabulary's median {median:.3g}"
    if ratio > OUTLIER_FACTOR:
        return (f"{figure} (above {percentile:.0f}% of its tokens): prompts will struggle to change this concept (a "
                "colour, style or setting asked for beside it may be ignored). For one that follows the prompt: keep "
                "an earlier step (`textinv eval RUN_DIR --copy-best best.pt` picks the best step that keeps "
                "editability), train with a lower learning rate or fewer steps (--set optim.learning_rate=..., "
                "--max-steps), or weaken it in the prompt ((word:0.7) in AUTOMATIC1111 and ComfyUI)")
    if ratio < 1 / OUTLIER_FACTOR:
        return (f"{figure}: it will hardly show in the prompt; train longer or with a higher learning rate "
                "(--set optim.learning_rate=...)")
    return None


def _diagnose_vectors(name: str, vectors: torch.Tensor, table: torch.Tensor, tokenizer, init_word: str | None,
                      nearest: int) -> dict:
    norms = table.norm(dim=1)
    median = float(norms.median())
    init = None
    if init_word:
        ids = tokenizer(init_word, add_special_tokens=False).input_ids
        init = table[ids].mean(0) if ids else None
    cos = F.normalize(vectors, dim=1) @ F.normalize(table, dim=1).T
    rows, warnings = [], []
    for i, v in enumerate(vectors):
        norm = float(v.norm())
        top = cos[i].topk(min(nearest, len(table)))
        words = tokenizer.convert_ids_to_tokens(top.indices.tolist())
        row = {
            "index": i,
            "norm": round(norm, 4),
            "norm_percentile": round(float((norms < norm).float().mean()) * 100, 1),
            "nearest": [{"token": w.removesuffix("</w>").removeprefix("▁"), "cosine": round(float(c), 4)}
                        for w, c in zip(words, top.values.tolist(), strict=True)],
        }
        if init is not None:
            row["init_word_cosine"] = round(float(F.cosine_similarity(v, init, dim=0)), 4)
        rows.append(row)
        warning = norm_warning(f"{name} vector {i}", norm, median, row["norm_percentile"])
        if warning:
            warnings.append(warning)
    return {"name": name, "vocab_median_norm": round(median, 4), "init_word": init_word, "vectors": rows,
            "warnings": warnings}
