"""How well, and how fast, textual inversion learns on the toy model: `python bench/learning.py` (make bench).

Trains `*` on 4 pictures of a pair the toy model never saw, through `textinv train` with the shipped
configs/toy.yaml, then judges 16 samples of `a photo of *`, 16 of the init word's prompt and the colour edits
(`a photo of a <colour> *`: identity and editability; bench/levers.py compares the levers between them)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from textinv.config import load_config
from textinv.toy import proof


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="textinv-bench-") as tmp:
        concept = proof.write_concept(Path(tmp) / "concept")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "textinv", "--quiet", "train", str(concept), "--init-word",
                        proof.INIT_WORD, "--config", "toy", "--name", "bench", "--output-dir", f"{tmp}/runs"],
                       check=True)
        seconds = time.perf_counter() - t0
        (embedding,) = Path(tmp, "runs").glob("bench_*/embeddings/bench.pt")
        match = proof.judge_embedding(embedding, samples=16, edits=True)
    steps = load_config("toy").train.max_steps
    colour, shape = proof.CONCEPT
    print(f"learning (toy model, {colour} {shape} from 4 pictures): {match.learned:.0%} of {match.samples} samples "
          f"right with the learned token vs {match.init:.0%} with the init word '{proof.INIT_WORD}', "
          f"{match.edits:.0%} of the colour edits in the colour asked for; "
          f"{steps} steps in {seconds:.0f} s (textinv train, wall clock)")


if __name__ == "__main__":
    main()
