"""What the training loop draws from: the prompt templates, the items (image + prompts), the latent cache and the
micro-batch drawing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from textinv.errors import ConfigError, DataError
from textinv.models.tokens import as_word
from textinv.pictures import TrainImage, load_folder
from textinv.reporting import Reporter

TEMPLATES_DIR = Path(__file__).parents[1] / "templates"


def load_templates(learnable_property: str) -> list[str]:
    """The prompt templates (`[name]` marks the placeholder) for `object` or `style`."""
    path = TEMPLATES_DIR / f"{learnable_property}.txt"
    if not path.is_file():
        raise DataError(f"no templates for learnable_property {learnable_property!r}; use object or style")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def fill_prompt(template: str, placeholder_text: str) -> str:
    """Put the placeholder (already expanded to all its vector tokens) where `[name]`, `{}` or a lone `*` stands."""
    out = template.replace("[name]", placeholder_text).replace("{}", placeholder_text)
    if out == template:
        out = re.sub(as_word(r"\*"), lambda _: placeholder_text, template)
    return out


CACHE_ON_DEVICE_BYTES = 256 * 2**20


@dataclass
class Item:
    """One training image: its index into the latent cache, the placeholder it shows and its prompts."""

    image: int
    prompts: list[str]
    placeholder: int = 0


def build_items(p, data, reporter: Reporter) -> tuple[list[TrainImage], list[Item]]:
    """Read the image folders (`data` config section) and work out each image's prompts (templates, or its caption)
    for the placeholders of the `p` (personalization) section."""
    paths = data.paths
    if not paths:
        raise DataError("no image folder given; pass one: textinv train ./my_cat --init-word cat")
    if len(paths) not in (1, len(p.placeholder_strings)):
        raise ConfigError(
            f"{len(paths)} image folders for {len(p.placeholder_strings)} placeholders; pass one folder per "
            "placeholder, in the same order, or one folder with caption files"
        )
    templates = load_templates(p.learnable_property)
    images: list[TrainImage] = []
    items: list[Item] = []
    for j, folder in enumerate(paths):
        found, warnings = load_folder(folder, data.resolution, center_crop=data.center_crop, masks=data.masks)
        for w in warnings:
            reporter.message(f"warning: {w}")
        own = j if len(paths) > 1 or len(p.placeholder_strings) == 1 else None
        for img in found:
            if img.caption:
                prompt = fill_prompt(img.caption, p.placeholder_strings[own or 0])
                named = [k for k, s in enumerate(p.placeholder_strings)
                         if re.search(as_word(re.escape(s)), prompt)]
                if not named:
                    raise DataError(
                        f"caption {img.path.with_suffix('.txt').name} does not mention the placeholder; write * or "
                        f"[name] where it goes, e.g. 'a photo of * on a sofa'"
                    )
                items.append(Item(image=len(images), prompts=[prompt], placeholder=own if own is not None else named[0]))
            elif own is None:
                raise DataError(
                    f"{img.path.name} has no caption file, and with {len(p.placeholder_strings)} placeholders in one "
                    "folder textinv cannot tell which it shows; pass one folder per placeholder"
                )
            else:
                prompts = [fill_prompt(t, p.placeholder_strings[own]) for t in templates]
                items.append(Item(image=len(images), prompts=prompts, placeholder=own))
            images.append(img)
    return images, items


class LatentCache:
    """Latent mean and std of every image and its mirror, [N, 2 (flip), C, h, w] each.

    A pair (image, flip) is encoded the first time a batch or an image log asks for it, one at a time (so the values
    do not depend on which pairs were asked for together, and a resumed run reads the same latents): the VAE runs at
    most once per pair, and the first step waits for the pairs it draws, not for the whole folder. Kept on the
    device in float32, or on the CPU in float16 when larger than CACHE_ON_DEVICE_BYTES."""

    def __init__(self, vae, images: list[TrainImage], device: torch.device):
        self.vae, self.images, self.device = vae, images, device
        side = images[0].pixels.shape[-1] // 2 ** (len(vae.config.block_out_channels) - 1)
        shape = (len(images), 2, vae.config.latent_channels, side, side)
        small = cache_bytes(len(images), vae.config.latent_channels, side) <= CACHE_ON_DEVICE_BYTES
        where, dtype = (device, torch.float32) if small else (torch.device("cpu"), torch.float16)
        self.mean = torch.zeros(shape, device=where, dtype=dtype)
        self.std = torch.zeros(shape, device=where, dtype=dtype)
        self.encoded = torch.zeros(shape[:2], dtype=torch.bool)

    @property
    def nbytes(self) -> int:
        return self.mean.nbytes + self.std.nbytes

    @torch.no_grad()
    def lookup(self, images: list[int], flips: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of each (image, flip) pair, encoding the pairs not seen before."""
        for i, f in zip(images, flips, strict=True):
            if not self.encoded[i, f]:
                pixels = self.images[i].pixels
                pixels = (pixels.flip(-1) if f else pixels)[None].to(device=self.device, dtype=self.vae.dtype)
                dist = self.vae.encode(pixels).latent_dist
                self.mean[i, f] = dist.mean[0].to(self.mean.device, self.mean.dtype)
                self.std[i, f] = dist.std[0].to(self.std.device, self.std.dtype)
                self.encoded[i, f] = True
        return self.mean[images, flips], self.std[images, flips]


def cache_bytes(n_images: int, latent_channels: int, latent_side: int) -> int:
    """The float32 size of the cache for `n_images` (mean and std, each image and its mirror)."""
    return n_images * 2 * 2 * latent_channels * latent_side * latent_side * 4


def latent_masks(images: list[TrainImage], latent_side: int, device: torch.device) -> torch.Tensor | None:
    """Each picture's mask at the latents' size (the share of each latent pixel's area the mask covers), for the
    picture and its mirror: [N, 2 (flip), 1, h, w], ones for a picture without a mask; None when none has one."""
    if all(img.mask is None for img in images):
        return None
    side = images[0].pixels.shape[-1]
    out = []
    for img in images:
        mask = img.mask if img.mask is not None else torch.ones(1, side, side)
        small = torch.nn.functional.adaptive_avg_pool2d(mask[None], latent_side)[0]
        out.append(torch.stack([small, small.flip(-1)]))
    return torch.stack(out).to(device)


def cache_latents(vae, images: list[TrainImage], device: torch.device) -> LatentCache:
    """The latent cache of `images`; pairs are encoded as they are first drawn (see LatentCache)."""
    return LatentCache(vae, images, device)


class EpochSampler:
    """Item order: every item `repeats` times per epoch, shuffled by the run's generator; its state checkpoints."""

    def __init__(self, n_items: int, repeats: int, generator: torch.Generator):
        self.n, self.repeats, self.g = n_items, repeats, generator
        self.order: list[int] = []
        self.pos = 0

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            if self.pos >= len(self.order):
                self.order = (torch.randperm(self.n * self.repeats, generator=self.g) % self.n).tolist()
                self.pos = 0
            out.append(self.order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"order": list(self.order), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order, self.pos = list(state["order"]), int(state["pos"])


@dataclass
class Batches:
    """Draws a training micro-batch: items in epoch order, a flip each, a latent sampled from the cached
    distribution, noise, timesteps and a prompt each; every draw from the run's one generator. `objective`
    (`training.objective`: DDPM or flow matching) draws the timesteps, noises the latents and gives the target.
    `masks` (`latent_masks`) restricts each sample's loss to its picture's mask.

    With several processes every one draws the whole global batch from the same generator and keeps its own
    slice, so N processes at batch b train on exactly what one process at batch N*b would."""

    items: list[Item]
    prompt_ids: list[torch.Tensor]  # per item: [n_prompts, 77] on device
    cache: LatentCache
    scaling: float
    objective: Any  # training.objective.Objective
    flip_p: float
    sampler: EpochSampler
    generator: torch.Generator
    device: torch.device
    rank: int = 0
    world: int = 1
    drawn: dict[int, tuple[int, int]] = field(default_factory=dict)  # item -> (flip, prompt) of its latest draw
    shift: float | None = None  # the VAE's latent shift (SD3, Flux.1: latents are (z - shift) * scaling)
    masks: torch.Tensor | None = None  # [N images, 2 (flip), 1, h, w] on device, or None: no picture has a mask

    def draw(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(noisy latents, timesteps, prompt ids, target, mask or None) of this process's `batch` samples: target
        is the noise, v for v-prediction models, or noise - latents for flow matching."""
        g, dev, n = self.generator, self.device, batch * self.world
        idx = self.sampler.take(n)
        flips = (torch.rand(n, generator=g) < self.flip_p).long()
        shape = (n, *self.cache.mean.shape[2:])
        eps = torch.randn(shape, generator=g)
        noise = torch.randn(shape, generator=g)
        t = self.objective.timesteps(n, g)
        choice = [int(torch.randint(0, len(self.items[i].prompts), (1,), generator=g)) for i in idx]
        for i, f, c in zip(idx, flips.tolist(), choice, strict=True):
            self.drawn.pop(i, None)  # re-insert: the dict's order is the order of the latest draws
            self.drawn[i] = (f, c)
        mine = slice(self.rank * batch, (self.rank + 1) * batch)
        ids = torch.stack([self.prompt_ids[i][c] for i, c in zip(idx[mine], choice[mine], strict=True)])
        mean, std = self.cache.lookup([self.items[i].image for i in idx[mine]], flips[mine].tolist())
        mean, std = mean.to(dev, torch.float32), std.to(dev, torch.float32)
        latents = mean + std * eps[mine].to(dev)
        latents = (latents if self.shift is None else latents - self.shift) * self.scaling
        noise, t = noise[mine].to(dev), t[mine].to(dev)
        noisy, target = self.objective.noised(latents, noise, t)
        mask = None
        if self.masks is not None:
            mask = self.masks[[self.items[i].image for i in idx[mine]], flips[mine].tolist()]
        return noisy, t, ids, target, mask
