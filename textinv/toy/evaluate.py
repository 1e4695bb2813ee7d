"""How well the toy model draws what it is asked: `python -m textinv.toy.evaluate` (after `make toy-model`).

For each (colour, shape) pair, generates `a photo of a <colour> <shape>` and asks the judge; writes the figures to
evaluation.json beside the model. The held-out pairs are reported apart: the model was never told their names.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from textinv.toy import world
from textinv.toy.build import MODEL_DIR
from textinv.toy.judge import judge


def evaluate(model: str | Path = MODEL_DIR, *, samples: int = 8, steps: int = 25, guidance: float = 5.0) -> dict:
    """Per-pair share of samples the judge sees as the pair asked for, plus colour-only and shape-only shares."""
    from textinv.generation.sampling import txt2img
    from textinv.models.loading import load_pipeline

    t0 = time.time()
    pipe = load_pipeline(str(model))
    pairs: dict[str, dict[str, float]] = {}
    for colour, shape in world.pairs():
        images = [g.image for g in txt2img(pipe, world.caption(colour, shape), n=samples, steps=steps, cfg=guidance,
                                           seed=0)]
        verdicts = [judge(im) for im in images]
        pairs[f"{colour} {shape}"] = {
            "both": sum(v.matches(colour, shape) for v in verdicts) / samples,
            "colour": sum(v.colour == colour for v in verdicts) / samples,
            "shape": sum(v.shape == shape for v in verdicts) / samples,
        }
    held_out = [" ".join(pair) for pair in world.HELD_OUT]
    seen = [v for k, v in pairs.items() if k not in held_out]
    return {
        "samples_per_pair": samples,
        "steps": steps,
        "guidance": guidance,
        "seen_pairs": {key: round(sum(v[key] for v in seen) / len(seen), 3) for key in ("both", "colour", "shape")},
        "seen_pairs_with_majority_right": sum(v["both"] > 0.5 for v in seen),
        "held_out": {k: pairs[k] for k in held_out},
        "pairs": pairs,
        "seconds": round(time.time() - t0),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args(argv)
    report = evaluate(args.model, samples=args.samples)
    (args.model / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "pairs"}))


if __name__ == "__main__":
    main()
