"""Proof of learning on the toy model: how often samples of a learned token show the concept it was taught,
against samples of its init word. Used by tests/test_learning.py and bench/learning.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textinv.toy import world
from textinv.toy.demo import INIT_WORD, PLACEHOLDER

CONCEPT = world.HELD_OUT


@dataclass
class Match:
    learned: float  # share of `a photo of *` samples the judge sees as the concept
    init: float  # share of `a photo of a <init word>` samples the judge sees as the concept
    samples: int


def write_concept(folder: str | Path, *, seed: int = 0) -> Path:
    """The 4 training pictures of the concept the toy model never saw."""
    world.write_concept(folder, *CONCEPT, n=4, seed=seed)
    return Path(folder)


def judge_embedding(
    embedding: str | Path, *, init_word: str = INIT_WORD, samples: int = 16, seed: int = 1000, steps: int | None = None,
    guidance: float | None = None, model: str = "toy",
) -> Match:
    """Generate `samples` pictures with the learned token and with the init word on the toy model; judge both.

    Sampling steps and guidance default to the packaged toy config's, as `textinv demo` uses them."""
    from textinv.config import load_config
    from textinv.generation.sampling import txt2img
    from textinv.models.embeddings import add_embeddings, load_embeddings
    from textinv.models.loading import load_pipeline
    from textinv.toy.judge import accuracy

    log = load_config("toy").log
    steps = steps or log.sample_steps
    guidance = log.guidance_scale if guidance is None else guidance
    pipe = load_pipeline(model)
    before = [g.image for g in txt2img(pipe, f"a photo of a {init_word}", n=samples, steps=steps, cfg=guidance,
                                       seed=seed)]
    add_embeddings(pipe, load_embeddings([embedding]))
    after = [g.image for g in txt2img(pipe, f"a photo of {PLACEHOLDER}", n=samples, steps=steps, cfg=guidance,
                                      seed=seed)]
    colour, shape = CONCEPT
    return Match(learned=accuracy(after, colour, shape), init=accuracy(before, colour, shape), samples=samples)
