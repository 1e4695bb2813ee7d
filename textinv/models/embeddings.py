"""Embeddings for a loaded pipeline: find the files `--embedding` names, add their placeholders to the
tokenizer(s) and text encoder(s), and warn about prompt words that look like placeholders but are not loaded."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from textinv.concepts.fetch import find_local
from textinv.errors import ConfigError, EmbeddingFormatError, ModelError
from textinv.formats import EMBEDDING_SUFFIXES
from textinv.formats.embedding import Embedding
from textinv.formats.families import check_fits
from textinv.formats.files import load_embedding
from textinv.hashing import embedding_hash
from textinv.models.info import LoadedToken, ModelInfo
from textinv.models.loading import encoder_widths, text_encoders
from textinv.models.tokens import as_word, expand_placeholders

# Words a user means as placeholders: `<cat-toy>` (sd-concepts) or a bare `*` (the paper code).
_PLACEHOLDER_LIKE = re.compile(r"<[^<>\s]+>|" + as_word(r"\*"))


def find_embedding_files(spec: str | Path, *, folder: Path = Path("embeddings")) -> list[Path]:
    """`--embedding` as given: a file, a folder of embedding files, a concept folder, or a concept name."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        if (path / "learned_embeds.bin").is_file() or (path / "learned_embeds.safetensors").is_file():
            return [path]  # an sd-concepts-library folder
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EMBEDDING_SUFFIXES)
        concept_dirs = sorted(p for p in path.iterdir() if p.is_dir() and any(p.glob("learned_embeds.*")))
        if not files and not concept_dirs:
            raise EmbeddingFormatError(
                f"{path}: a folder with no embedding files (.pt, .bin, .safetensors, .png)"
            )
        return files + concept_dirs
    found = find_local(str(spec), folder)
    if found is not None:
        return [found]
    raise EmbeddingFormatError(
        f"--embedding {spec}: no such file or folder, and no concept {spec!r} in {folder}/; "
        f"fetch it with `textinv fetch {spec}` or give the path of an embedding file"
    )


def load_embeddings(
    specs: list[str | Path], *, tokens: list[str] | None = None
) -> list[tuple[Path, Embedding]]:
    """Read every `--embedding`, renaming placeholders to `tokens` (one per embedding file) when given."""
    files = [f for spec in specs for f in find_embedding_files(spec)]
    loaded = [(f, load_embedding(f)) for f in files]
    if tokens:
        if len(tokens) != len(loaded):
            raise ConfigError(
                f"--token was given {len(tokens)} times for {len(loaded)} embedding files; give one --token per file"
            )
        for (f, emb), new in zip(loaded, tokens, strict=True):
            if len(emb.tokens) != 1:
                names = ", ".join(t.name for t in emb.tokens)
                raise ConfigError(
                    f"--token {new}: {f.name} holds {len(emb.tokens)} placeholders ({names}), not one"
                )
            emb.tokens[0].name = new
    seen: dict[str, tuple[Path, torch.Tensor]] = {}
    for f, emb in loaded:  # what add_embeddings would refuse after the model loaded, said before it loads
        for tok in emb.tokens:
            prior = seen.setdefault(tok.name, (f, tok.vectors))
            if prior[0] != f and not (prior[1].shape == tok.vectors.shape and torch.equal(prior[1], tok.vectors)):
                raise _in_both(tok.name, prior[0], f)
    return loaded


def add_embeddings(pipe, embeddings: list[tuple[Path, Embedding]]) -> list[str]:
    """Add each placeholder to the tokenizer(s) and text encoder(s); returns the placeholders now usable.

    A placeholder with n vectors becomes tokens `name`, `name_1` ... `name_{n-1}` (diffusers' convention), and
    diffusers' pipelines expand `name` in a prompt to all of them (`prompt_for` does it for SD3's, which has no
    textual-inversion loader). Each part goes into its own encoder: SDXL's clip_l and clip_g, SD3's and Flux.1's
    t5 into T5-XXL as well, spliced into its tokenizer and embedding table as the CLIP ones are (diffusers'
    SD3 pipeline loads none, FluxPipeline's `load_textual_inversion` only one encoder per call). Loading the same
    file again is a no-op.
    """
    info: ModelInfo = pipe.textinv
    encoders = text_encoders(pipe)
    dims = encoder_widths(pipe)
    added: list[str] = []
    for path, emb in embeddings:
        for tok in emb.tokens:
            check_fits(path, tok.name, tok.widths, dims)
            prior = info.embeddings.get(tok.name)
            if prior is not None:
                if prior.vectors.shape == tok.vectors.shape and torch.equal(prior.vectors, tok.vectors):
                    continue
                raise _in_both(tok.name, Path(prior.source), path)
            names = [tok.name] + [f"{tok.name}_{i}" for i in range(1, tok.num_vectors)]
            ids = None
            for key, _, tokenizer, encoder in encoders:
                part_ids = _add_tokens(tokenizer, encoder, names, tok.parts[key])
                if ids is None:
                    ids = part_ids
                elif key == "clip_g" and part_ids != ids:  # both CLIP tokenizers share CLIP's vocabulary
                    raise ModelError(
                        f"{tok.name}: the two CLIP tokenizers gave different ids; the model is inconsistent"
                    )
            info.embeddings[tok.name] = LoadedToken(
                placeholder=tok.name,
                token_ids=ids,
                source=str(path),
                hash=embedding_hash(path),
                vectors=tok.vectors.clone(),
            )
            added.append(tok.name)
    return added


def _in_both(placeholder: str, first: Path, second: Path) -> ModelError:
    return ModelError(f"placeholder {placeholder} is in both {first.name} and {second.name}; "
                      "rename one with --token NEW (one --token per --embedding)")


def _add_tokens(tokenizer, text_encoder, names: list[str], vectors: torch.Tensor) -> list[int]:
    tokenizer.add_tokens(names)
    ids = tokenizer.convert_tokens_to_ids(names)
    # A placeholder already in the vocabulary (the paper's `*` is one of CLIP's byte tokens) keeps its id: its
    # row is replaced, as the paper code and InvokeAI did.
    if max(ids) >= text_encoder.get_input_embeddings().weight.shape[0]:
        try:  # the new rows are overwritten below, so skip transformers' mean/covariance initialisation
            text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        except TypeError:  # transformers < 4.46
            text_encoder.resize_token_embeddings(len(tokenizer))
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = vectors.to(device=weight.device, dtype=weight.dtype)
    return ids


def prompt_for(pipe, prompt: str) -> str:
    """The prompt as the pipeline should get it: each multi-vector placeholder written as all its tokens, for a
    pipeline that does not do it itself (diffusers' TextualInversionLoaderMixin does; SD3's has none)."""
    info = getattr(pipe, "textinv", None)
    if info is None or hasattr(pipe, "maybe_convert_prompt"):
        return prompt
    expansions = {name: " ".join([name] + [f"{name}_{i}" for i in range(1, len(t.token_ids))])
                  for name, t in info.embeddings.items() if len(t.token_ids) > 1}
    return expand_placeholders(prompt, expansions)


def check_prompt(pipe, prompt: str) -> list[str]:
    """Warnings for words that look like placeholders (`<foo>`, `*`) but name no loaded embedding."""
    info = getattr(pipe, "textinv", None)
    loaded = set(info.embeddings) if info is not None else set()
    unknown = dict.fromkeys(
        m.group(0) for m in _PLACEHOLDER_LIKE.finditer(prompt) if m.group(0) not in loaded
    )
    hint = (
        f"loaded: {', '.join(sorted(loaded))}"
        if loaded
        else "no embedding is loaded; add one with --embedding"
    )
    return [f"{word} is not a loaded placeholder, so it is used as plain text ({hint})" for word in unknown]
