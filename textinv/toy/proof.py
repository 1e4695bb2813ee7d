"""Proof of learning on the toy model: how often samples of a learned token show the concept it was taught
(identity), how often `a photo of a <colour> *` shows the concept's shape in that colour (editability), against
samples of its init word. Used by tests/test_learning.py and the benches bench/learning.py and bench/levers.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textinv.toy import world
from textinv.toy.demo import INIT_WORD, PLACEHOLDER

CONCEPT = world.HELD_OUT[0]
# Edit templates of the proofs: the eval's (evaluation.evaluate.TOY_EDIT_PROMPTS) are checked with others too.
EDIT_TEMPLATES = ("a photo of a {colour} {}", "a rendering of a {colour} {}")


@dataclass
class Match:
    learned: float  # share of `a photo of *` samples the judge sees as the concept (identity)
    init: float  # share of `a photo of a <init word>` samples the judge sees as the concept
    samples: int
    edits: float | None = None  # share of `a photo of a <colour> *` samples that show the concept's shape in colour


def write_concept(folder: str | Path, *, seed: int = 0, concept: tuple[str, str] = CONCEPT,
                  sizes: tuple[float, float] = world.SIZES) -> Path:
    """The 4 training pictures of a concept the toy model never saw."""
    world.write_concept(folder, *concept, n=4, seed=seed, sizes=sizes)
    return Path(folder)


def edit_share(pipe, word: str, concept: tuple[str, str], *, templates=EDIT_TEMPLATES, samples: int = 4,
               seed: int = 1000, steps: int, guidance: float, prompt=None, colours=None) -> float:
    """The share of `samples` pictures per (other colour, template) that the judge sees as the concept's shape in
    the colour asked for. `word` is the placeholder as the prompt writes it (e.g. `*` or `(*:0.7)`); `prompt`
    turns a template's text into the prompt (the text itself by default); `colours` limits the edits asked for
    (default: every other colour of the world)."""
    from textinv.generation.sampling import txt2img
    from textinv.toy.judge import judge

    colour, shape = concept
    right = total = 0
    for template in templates:
        for other in (c for c in colours or world.COLOURS if c != colour):
            text = template.format(word, colour=other)
            images = [g.image for g in txt2img(pipe, prompt(text) if prompt else text, n=samples, steps=steps,
                                               cfg=guidance, seed=seed)]
            right += sum(judge(im).matches(other, shape) for im in images)
            total += len(images)
    return right / total


def judge_embedding(
    embedding: str | Path, *, init_word: str = INIT_WORD, samples: int = 16, seed: int = 1000, steps: int | None = None,
    guidance: float | None = None, model: str = "toy", concept: tuple[str, str] = CONCEPT,
    edits: bool = False, templates=EDIT_TEMPLATES, edit_samples: int = 4,
) -> Match:
    """Generate `samples` pictures with the learned token and with the init word on the toy model; judge both
    (and, with `edits`, the colour edits: `edit_samples` per other colour and template).

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
    add_embeddings(pipe, load_embeddings([embedding], tokens=[PLACEHOLDER]))
    after = [g.image for g in txt2img(pipe, f"a photo of {PLACEHOLDER}", n=samples, steps=steps, cfg=guidance,
                                      seed=seed)]
    edit = edit_share(pipe, PLACEHOLDER, concept, templates=templates, samples=edit_samples, seed=seed, steps=steps,
                      guidance=guidance) if edits else None
    colour, shape = concept
    return Match(learned=accuracy(after, colour, shape), init=accuracy(before, colour, shape), samples=samples,
                 edits=edit)
