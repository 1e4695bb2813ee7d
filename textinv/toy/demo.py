"""`textinv demo`: the whole loop on the shipped toy model, on the CPU, in a few minutes.

Writes 4 pictures of a pair the toy model never saw (a purple triangle), learns `*` from them with the shipped
`configs/toy.yaml`, generates with the init word, with `*`, and with `*` in other colours (`a photo of a green *`:
does the learned word still obey the prompt?), and puts the four side by side. No printing here: progress and one
line per stage go to the `textinv.reporting.Reporter` the caller passes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from textinv.reporting import SILENT, Reporter
from textinv.toy import world

PLACEHOLDER = "*"
# The init word names the shape but not the colour: training has to find the colour the model was never told.
INIT_WORD = "triangle"
CONFIG = "toy"  # the packaged textinv/configs/toy.yaml
EDIT_PROMPT = f"a photo of a <colour> {PLACEHOLDER}"  # the edit row: the learned word in the world's other colours
CELL = 96  # each 32 px picture is shown 3x, without smoothing
# The toy model's tensors are small: on 2 cores shared with other work, generation ran 2.8x slower with 2 torch
# threads than with 1, and training 1.7-4x (toy/build.py). One thread is the choice that does not collapse under
# load, and it makes the run reproducible.
THREADS = 1


@dataclass
class DemoResult:
    picture: Path  # inputs | init word | learned
    inputs: list[Path]
    embedding: Path
    run_dir: Path
    steps: int
    init_prompt: str
    learned_prompt: str
    init_match: float  # share of init-word samples the judge sees as the concept
    learned_match: float  # share of learned-token samples the judge sees as the concept
    seconds: float
    edit_prompt: str = ""  # the edit template, e.g. "a photo of a <colour> *"
    edit_match: float = 0.0  # share of the edits the judge sees as the concept's shape in the colour asked for


def run_demo(
    out_dir: str | Path,
    *,
    concept: tuple[str, str] = world.HELD_OUT[0],
    init_word: str = INIT_WORD,
    samples: int = 4,
    max_steps: int | None = None,
    seed: int = 0,
    model: str = "toy",
    threads: int = THREADS,
    reporter: Reporter = SILENT,
) -> DemoResult:
    """Teach the toy model `concept` from 4 rendered pictures and write the side-by-side picture into `out_dir`.
    `reporter` hears the training's `train` task, the sampling's `images`/`steps` and a message per stage; torch
    runs on `threads` threads meanwhile."""
    from textinv.config import build_config
    from textinv.generation.sampling import txt2img
    from textinv.models.embeddings import add_embeddings, load_embeddings
    from textinv.models.loading import load_pipeline
    from textinv.toy.judge import accuracy, judge
    from textinv.training.loop import train

    with _torch_threads(threads):
        t0 = time.perf_counter()
        say = reporter.message
        out = Path(out_dir)
        colour, shape = concept
        inputs = world.write_concept(out / "inputs", colour, shape, n=4, seed=seed)
        say(f"wrote 4 pictures of a {colour} {shape} to {out / 'inputs'}")

        cfg = build_config(CONFIG, None, **{
            "data.paths": [str(out / "inputs")],
            "personalization.placeholder_strings": [PLACEHOLDER],
            "personalization.initializer_words": [init_word],
            "model.source": model,
            "log.output_dir": str(out / "runs"),
            "log.name": f"{colour}-{shape}",
            "train.max_steps": max_steps,
        })
        result = train(cfg, reporter=reporter)
        say(f"learned {PLACEHOLDER} in {result.step} steps: {result.embedding_path}")

        pipe = load_pipeline(model)
        gen = cfg.log
        init_prompt = f"a photo of a {init_word}"
        learned_prompt = f"a photo of {PLACEHOLDER}"
        say(f"generating {samples} pictures of '{init_prompt}' and {samples} of '{learned_prompt}'")
        before = [g.image for g in txt2img(pipe, init_prompt, n=samples, steps=gen.sample_steps,
                                           cfg=gen.guidance_scale, seed=seed, reporter=reporter)]
        add_embeddings(pipe, load_embeddings([result.embedding_path]))
        after = [g.image for g in txt2img(pipe, learned_prompt, n=samples, steps=gen.sample_steps,
                                          cfg=gen.guidance_scale, seed=seed, reporter=reporter)]
        others = [c for c in world.COLOURS if c != colour][:samples]
        say(f"generating '{EDIT_PROMPT}' for {', '.join(others)}")
        edits = [txt2img(pipe, EDIT_PROMPT.replace("<colour>", c), n=1, steps=gen.sample_steps,
                         cfg=gen.guidance_scale, seed=seed + i)[0].image for i, c in enumerate(others)]

        picture = out / "demo.png"
        side_by_side([[Image.open(p) for p in inputs], before, after, edits],
                     ["training pictures", f"'{init_prompt}'", f"'{learned_prompt}'",
                      f"'{EDIT_PROMPT}'"]).save(picture)
        return DemoResult(
            picture=picture,
            inputs=inputs,
            embedding=result.embedding_path,
            run_dir=result.run_dir,
            steps=result.step,
            init_prompt=init_prompt,
            learned_prompt=learned_prompt,
            init_match=accuracy(before, colour, shape),
            learned_match=accuracy(after, colour, shape),
            seconds=time.perf_counter() - t0,
            edit_prompt=EDIT_PROMPT,
            edit_match=sum(judge(im).matches(c, shape) for im, c in zip(edits, others, strict=True)) / len(edits),
        )


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def side_by_side(columns: list[list[Image.Image]], titles: list[str]) -> Image.Image:
    """Columns of pictures, each a 2-wide grid with its title above it, on white."""
    gap, title_h, per_row = 12, 20, 2
    rows = max((len(c) + per_row - 1) // per_row for c in columns)
    col_w = per_row * CELL + (per_row - 1) * 4
    width = len(columns) * col_w + (len(columns) + 1) * gap
    height = title_h + rows * CELL + (rows - 1) * 4 + 2 * gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    for i, column in enumerate(columns):
        x0 = gap + i * (col_w + gap)
        draw.text((x0, gap // 2), titles[i], fill=(40, 40, 40), font=font)
        for j, img in enumerate(column):
            x = x0 + (j % per_row) * (CELL + 4)
            y = gap + title_h + (j // per_row) * (CELL + 4)
            canvas.paste(img.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST), (x, y))
    return canvas
