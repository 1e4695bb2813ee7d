"""The toy world: one coloured shape on a light background, with captions. Deterministic from a seed.

Six colours far apart in hue and four shapes with different silhouettes, so that a 16x16 latent can tell them
apart and a few lines of numpy (judge.py) can check a generated picture.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw

SIZE = 32
# Drawn this many times larger, then shrunk, for smooth (anti-aliased) edges like a photo's.
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 135, 20),
    "yellow": (230, 205, 25),
    "green": (40, 160, 55),
    "blue": (35, 75, 215),
    "purple": (135, 45, 185),
}
SHAPES = ("circle", "square", "triangle", "cross")

# The pairs the shipped model never saw (its training.json says the same): four, each of another colour and shape,
# so that every colour edit of one is a pair the model knows (a green edit of the purple triangle is the green
# triangle, which it saw). The first is the demo's; the levers' defaults are chosen on some and checked on others.
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("purple", "triangle"), ("green", "circle"), ("orange", "cross"), ("yellow", "square"),
)

# Textual inversion's prompt templates (the original paper's object list); the toy model learns all of them so
# training prompts read as the model expects.
TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)
# Words of the style templates and common prompts: in the vocabulary so they are one token each.
EXTRA_WORDS = ("painting", "style", "in", "art", "picture", "image", "object", "thing", "toy", "shape", "and", "with")


def vocabulary() -> list[str]:
    """Every word the toy tokenizer knows as one token: colours, shapes and the template words."""
    words: list[str] = []
    for template in TEMPLATES:
        words += template.replace("{}", " ").replace("-", " ").split()
    return list(dict.fromkeys([*COLOURS, *SHAPES, *words, *EXTRA_WORDS]))


def pairs(*, include_held_out: bool = True) -> list[tuple[str, str]]:
    """All (colour, shape) pairs, in a fixed order."""
    every = [(c, s) for c in COLOURS for s in SHAPES]
    return every if include_held_out else [p for p in every if p not in HELD_OUT]


def caption(colour: str, shape: str, template: str = TEMPLATES[0]) -> str:
    return template.format(f"{colour} {shape}")


@dataclass(frozen=True)
class Scene:
    """One picture's contents: what is drawn, where, and how big."""

    colour: str
    shape: str
    size: float  # side of the shape's box, in pixels of the 32 px picture
    cx: float
    cy: float
    background: tuple[int, int, int]
    tint: tuple[int, int, int]  # a small shift of the colour, so no two reds are the same


# The renderer's range of shape sizes (the box's side, in pixels). Pictures drawn differently (smaller shapes,
# nearer the edges) check that a measure does not rest on the world's own way of drawing (bench/learning.py).
SIZES = (13.0, 24.0)


def random_scene(rng: random.Random, colour: str, shape: str, sizes: tuple[float, float] = SIZES) -> Scene:
    size = rng.uniform(*sizes)
    margin = size / 2 + 1
    grey = rng.randint(226, 250)
    background = tuple(min(255, grey + rng.randint(-6, 6)) for _ in range(3))
    tint = tuple(rng.randint(-15, 15) for _ in range(3))
    return Scene(
        colour, shape, size, rng.uniform(margin, SIZE - margin), rng.uniform(margin, SIZE - margin),
        background, tint,  # type: ignore[arg-type]
    )


def render(scene: Scene) -> Image.Image:
    """Draw one scene as a 32x32 RGB picture."""
    k = SUPERSAMPLE
    img = Image.new("RGB", (SIZE * k, SIZE * k), scene.background)
    draw = ImageDraw.Draw(img)
    fill = tuple(max(0, min(255, c + t)) for c, t in zip(COLOURS[scene.colour], scene.tint, strict=True))
    half = scene.size * k / 2
    x, y = scene.cx * k, scene.cy * k
    if scene.shape == "circle":
        draw.ellipse([x - half, y - half, x + half, y + half], fill=fill)
    elif scene.shape == "square":
        h = half * 0.88  # a square of the same box looks bigger than the other shapes
        draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
    elif scene.shape == "triangle":
        draw.polygon([(x, y - half), (x + half, y + half), (x - half, y + half)], fill=fill)
    elif scene.shape == "cross":
        arm = half / 3
        draw.rectangle([x - half, y - arm, x + half, y + arm], fill=fill)
        draw.rectangle([x - arm, y - half, x + arm, y + half], fill=fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}; the toy world draws {', '.join(SHAPES)}")
    return img.resize((SIZE, SIZE), Image.Resampling.BOX)


def sample(
    n: int, *, seed: int = 0, include_held_out: bool = True, only: tuple[str, str] | None = None,
    sizes: tuple[float, float] = SIZES,
) -> Iterator[tuple[Image.Image, str, str]]:
    """`n` pictures as (image, colour, shape), cycling through the pairs (or only `only`) so each is equally common;
    shapes of a side drawn from `sizes`."""
    rng = random.Random(seed)
    choices = [only] if only else pairs(include_held_out=include_held_out)
    for i in range(n):
        colour, shape = choices[i % len(choices)]
        yield render(random_scene(rng, colour, shape, sizes)), colour, shape


def write_concept(folder, colour: str, shape: str, *, n: int = 4, seed: int = 0,
                  sizes: tuple[float, float] = SIZES) -> list:
    """Write `n` pictures of one (colour, shape) pair as PNGs into `folder` (a training folder); return the paths."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (img, _, _) in enumerate(sample(n, seed=seed, only=(colour, shape), sizes=sizes)):
        path = folder / f"{colour}-{shape}-{i}.png"
        img.save(path)
        paths.append(path)
    return paths
