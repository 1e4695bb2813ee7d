"""Write a real CLIP tokenizer (vocab.json + merges.txt) whose vocabulary is a given word list.

Every byte has a token of its own (CLIP's byte-level alphabet, with and without the end-of-word mark), so any
text tokenizes; each listed word gets merges that make it one token.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

END = "</w>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) map from each byte to a printable character, in CLIP's vocabulary order: the
    printable bytes first, then the others shifted past 255."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    for extra, b in enumerate(b for b in range(256) if b not in chars):
        chars[b] = chr(256 + extra)
    return chars


def write_clip_tokenizer(words: list[str], folder: str | Path) -> CLIPTokenizer:
    """Write vocab.json and merges.txt for `words` into `folder` and return the loaded tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    byte_chars = bytes_to_unicode()
    alphabet = list(byte_chars.values())
    vocab: dict[str, int] = {}
    for piece in alphabet + [c + END for c in alphabet]:
        vocab.setdefault(piece, len(vocab))
    merges: list[str] = []
    seen: set[tuple[str, str]] = set()
    for word in dict.fromkeys(w.lower() for w in words if w.strip()):
        encoded = "".join(byte_chars[b] for b in word.encode("utf-8"))
        pieces = list(encoded[:-1]) + [encoded[-1] + END]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in seen:
                seen.add(pair)
                merges.append(f"{pair[0]} {pair[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
        # An earlier word's merge can win over this chain ("red" merges r+e, which splits "green" into g|re|e|n):
        # add merges, each last in rank, until BPE as the tokenizer runs it gives the whole word.
        pieces = _bpe(list(encoded[:-1]) + [encoded[-1] + END], merges)
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = _bpe(pieces, merges)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return CLIPTokenizer.from_pretrained(str(folder))


def _bpe(pieces: list[str], merges: list[str]) -> list[str]:
    """Apply `merges` to `pieces` the way CLIP's tokenizer does: always the best-ranked adjacent pair first."""
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), len(ranks)), a, b) for a, b in zip(pieces, pieces[1:], strict=False)]
        rank, a, b = min(pairs)
        if rank == len(ranks):
            break
        merged: list[str] = []
        i = 0
        while i < len(pieces):
            if i + 1 < len(pieces) and pieces[i] == a and pieces[i + 1] == b:
                merged.append(a + b)
                i += 2
            else:
                merged.append(pieces[i])
                i += 1
        pieces = merged
    return pieces


def write_t5_tokenizer(words: list[str], folder: str | Path):
    """Write a real T5 tokenizer (a sentencepiece Unigram model built with `tokenizers`, as transformers' T5Tokenizer
    holds it) whose vocabulary is T5's specials, `words` as whole words ("▁cat") and every lowercase letter, digit and
    a few marks as pieces, so any text tokenizes; returns the loaded tokenizer."""
    from transformers import T5Tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -1.0) for w in dict.fromkeys(w.lower() for w in words if w.strip())]
    marks = "abcdefghijklmnopqrstuvwxyz0123456789<>-_*!.,'"
    vocab += [(c, -5.0) for c in marks]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    tokenizer.save_pretrained(str(folder))
    return T5Tokenizer.from_pretrained(str(folder))
