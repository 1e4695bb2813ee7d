"""Tell the colour and shape of a toy picture, generated or rendered, to check that a model drew what it was asked.

Colour: the hue of the foreground (the saturated pixels; the background is a light grey), nearest of the
world's colours on the hue circle. Shape: the foreground's silhouette, cropped to its box and shrunk to a
6x6 grid of coverage, nearest of four average silhouettes learned from rendered pictures (nearest centroid).
"""

from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from textinv.toy import world

GRID = 6
# Pixels at least this saturated (HSV) and this far from the background colour are the shape. Measured on
# rendered pictures: backgrounds reach 0.05, the palest colour (yellow) starts at 0.75.
MIN_SATURATION = 0.3
MIN_DISTANCE = 0.15
MIN_PIXELS = 8  # fewer foreground pixels than this: nothing was drawn
MAX_COVER = 0.6  # the largest shape covers 45% of the picture; more than this is noise, not a shape on a background
MIN_COHERENCE = 0.6  # mean resultant length of the foreground's hues: 1 for one colour, ~0 for a rainbow of noise
# A silhouette is a shape when it is near that shape's average (rendered pictures reach 0.7; a generated triangle
# with a clipped corner 3.3) and clearly nearer to it than to any other (the next is at least twice as far).
MAX_DISTANCE = 4.0
MARGIN = 0.5


@dataclass(frozen=True)
class Verdict:
    colour: str | None
    shape: str | None

    def matches(self, colour: str, shape: str) -> bool:
        return self.colour == colour and self.shape == shape


def _hue(rgb: tuple[float, float, float]) -> float:
    return colorsys.rgb_to_hsv(*rgb)[0]


_HUES = {name: _hue(tuple(c / 255 for c in rgb)) for name, rgb in world.COLOURS.items()}


def foreground(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The picture as floats in [0, 1] (HxWx3) and the mask of its foreground pixels."""
    rgb = np.asarray(image.convert("RGB").resize((world.SIZE, world.SIZE), Image.Resampling.BILINEAR), dtype=np.float32)
    rgb = rgb / 255.0
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    hi, lo = rgb.max(axis=2), rgb.min(axis=2)
    saturation = (hi - lo) / np.maximum(hi, 1e-6)
    distance = np.abs(rgb - background).max(axis=2)
    return rgb, (saturation > MIN_SATURATION) & (distance > MIN_DISTANCE)


def colour_of(rgb: np.ndarray, mask: np.ndarray) -> str | None:
    """The world colour nearest in hue to the foreground's circular mean hue, weighted by saturation; None when
    the hues scatter (no one colour)."""
    px = rgb[mask]
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in px])
    angle = hsv[:, 0] * 2 * np.pi
    w = hsv[:, 1]
    sin, cos = (w * np.sin(angle)).sum(), (w * np.cos(angle)).sum()
    if np.hypot(sin, cos) / max(w.sum(), 1e-6) < MIN_COHERENCE:
        return None
    mean = (np.arctan2(sin, cos) / (2 * np.pi)) % 1.0
    return min(_HUES, key=lambda name: min(abs(_HUES[name] - mean), 1 - abs(_HUES[name] - mean)))


def silhouette(mask: np.ndarray) -> np.ndarray:
    """The mask cropped to its box and shrunk to GRID x GRID coverage fractions, flattened."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
    # Upsample first so even a 5-pixel shape averages smoothly into the grid.
    img = Image.fromarray((crop * 255).astype(np.uint8)).resize((GRID * 8, GRID * 8), Image.Resampling.NEAREST)
    small = img.resize((GRID, GRID), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).ravel() / 255.0


@functools.cache
def _centroids() -> dict[str, np.ndarray]:
    """Average silhouette per shape over rendered pictures of every colour (seed 12345, never a test seed)."""
    sums: dict[str, list[np.ndarray]] = {s: [] for s in world.SHAPES}
    for img, _, shape in world.sample(len(world.pairs()) * 20, seed=12345):
        sums[shape].append(silhouette(foreground(img)[1]))
    return {s: np.mean(v, axis=0) for s, v in sums.items()}


def judge(image: Image.Image) -> Verdict:
    """The colour and shape drawn in `image`; None for each when no one colour or no known shape stands out from
    a light background."""
    rgb, mask = foreground(image)
    if mask.sum() < MIN_PIXELS or mask.mean() > MAX_COVER:
        return Verdict(None, None)
    features = silhouette(mask)
    centroids = _centroids()
    distances = {s: float(((c - features) ** 2).sum()) for s, c in centroids.items()}
    first, second = sorted(distances, key=distances.__getitem__)[:2]
    known = distances[first] <= MAX_DISTANCE and distances[first] <= MARGIN * distances[second]
    return Verdict(colour_of(rgb, mask), first if known else None)


def accuracy(images: list[Image.Image], colour: str, shape: str) -> float:
    """The fraction of `images` the judge sees as a `colour` `shape`."""
    if not images:
        return 0.0
    return sum(judge(im).matches(colour, shape) for im in images) / len(images)
