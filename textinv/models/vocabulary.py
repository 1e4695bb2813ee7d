"""`textinv inspect FILE --model M`: an embedding's vectors against the model's own token vocabulary.

For each vector: its norm beside the vocabulary's (median, and the percentile of the vocabulary it exceeds), the
vocabulary tokens nearest to it by cosine, and its cosine to the init word when the file records one. A norm far
from the vocabulary's (more than OUTLIER_FACTOR times the median, or under its 1/OUTLIER_FACTOR) is the usual
cause of an embedding that overpowers the prompt (or does nothing), and gets a warning.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from textinv.errors import ModelError

OUTLIER_FACTOR = 3.0
NEAREST = 5


def inspect_files(paths: Iterable[str | Path], model: str | None = None, *, raise_errors: bool = False
                  ) -> Iterator[dict]:
    """`textinv inspect [--model M]`: each file described, and with `model` checked against its vocabulary. What
    the files and the model's own files show comes first: the model exists, and each embedding's family and widths
    fit it; the model then loads once, only when some file fits it (a load error ends the command)."""
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
    pipe = load_pipeline(model) if any(r.embedding is not None for r in read) else None
    yield from describe_read(read, check=lambda emb: diagnose(emb, pipe), raise_errors=raise_errors)


def diagnose(emb, pipe, *, nearest: int = NEAREST) -> dict:
    """{"model", "tokens": [{"name", "encoder", "vocab_median_norm", "vectors": [...]}], "warnings": [...]}."""
    encoders = [("", pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        encoders.append(("_2", pipe.tokenizer_2, pipe.text_encoder_2))
    out: dict = {"model": pipe.textinv.name, "tokens": [], "warnings": []}
    for tok in emb.tokens:
        init_word = emb.init_words.get(tok.name)
        for suffix, tokenizer, encoder in encoders:
            vectors = tok.vectors if not suffix else tok.vectors_2
            if vectors is None:
                continue
            table = encoder.get_input_embeddings().weight.detach().float().cpu()
            if vectors.shape[1] != table.shape[1]:
                raise ModelError(f"{tok.name} has {vectors.shape[1]}-dim vectors but the model's text encoder"
                                 f"{suffix} has {table.shape[1]}; pass the --model it was trained for")
            entry = _diagnose_vectors(tok.name, vectors.float(), table, tokenizer, init_word, nearest)
            entry["encoder"] = f"text_encoder{suffix}"
            out["tokens"].append(entry)
            out["warnings"] += entry.pop("warnings")
    return out


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
            "nearest": [{"token": w.removesuffix("</w>"), "cosine": round(float(c), 4)}
                        for w, c in zip(words, top.values.tolist(), strict=True)],
        }
        if init is not None:
            row["init_word_cosine"] = round(float(F.cosine_similarity(v, init, dim=0)), 4)
        rows.append(row)
        ratio = norm / median if median else float("inf")
        if ratio > OUTLIER_FACTOR or ratio < 1 / OUTLIER_FACTOR:
            what = "overpower the prompt" if ratio > 1 else "hardly show in the prompt"
            warnings.append(f"{name} vector {i} has norm {norm:.3g}, {ratio:.1f}x the vocabulary's median "
                            f"{median:.3g}: it will likely {what}; lower its weight or train with a lower rate")
    return {"name": name, "vocab_median_norm": round(median, 4), "init_word": init_word, "vectors": rows,
            "warnings": warnings}
