"""Pictures of a run: the paper code's image logs (conditioning, inputs, reconstruction, samples, samples_scaled,
init_word), one row per placeholder, and the loss plot."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path
from typing import Any

import torch

from textinv.atomic import atomic_path, write_text
from textinv.data import Batches, TrainImage, fill_prompt, load_templates
from textinv.tokens import expand_placeholders

TEXT_SIDE = 256  # the conditioning tiles are at least this wide, so the prompt stays readable at 32 px training


def logged_images(batches: Batches, n_placeholders: int, k: int) -> list[list[tuple[int, int, int]]]:
    """Per placeholder, up to `k` (item, flip, prompt) of the images drawn most recently, newest first: what the
    conditioning, inputs and reconstruction rows show."""
    rows: list[list[tuple[int, int, int]]] = [[] for _ in range(n_placeholders)]
    for item, (flip, prompt) in reversed(batches.drawn.items()):
        row = rows[batches.items[item].placeholder]
        if len(row) < k:
            row.append((item, flip, prompt))
    return rows


@torch.no_grad()
def log_images(pipe, out: Path, step: int, log, p, images: list[TrainImage], batches: Batches,
               expansions: dict[str, str], resolution: int, seed: int, autocast_dtype, device) -> None:
    """Write images/<key>_gs-<step>.png for every key, and conditioning_gs-<step>.txt: the drawn prompts, one line
    per image, a blank line between placeholders. `log` and `p` are the log and personalization config sections."""
    from PIL import Image

    rows = logged_images(batches, len(p.placeholder_strings), log.num_images)

    def save(key: str, grid: Image.Image) -> None:
        with atomic_path(out / f"{key}_gs-{step:06d}.png") as tmp:
            grid.save(tmp, format="PNG")

    prompts = [[batches.items[i].prompts[c] for i, _, c in row] for row in rows]
    write_text(out / f"conditioning_gs-{step:06d}.txt", "\n\n".join("\n".join(r) for r in prompts) + "\n")
    side = max(resolution, TEXT_SIDE)
    save("conditioning", grid_of([[text_image(t, side) for t in r] for r in prompts]))
    save("inputs", grid_of([[to_pil(_flipped(images[batches.items[i].image].pixels, f)) for i, f, _ in row]
                            for row in rows]))
    vae = pipe.vae
    recon = []
    for row in rows:
        if not row:
            recon.append([])
            continue
        z, _ = batches.cache.lookup([batches.items[i].image for i, _, _ in row], [f for _, f, _ in row])
        recon.append([to_pil(x) for x in vae.decode(z.to(device, vae.dtype)).sample.float().cpu()])
    save("reconstruction", grid_of(recon))

    template = load_templates(p.learnable_property)[0]
    common = {"num_inference_steps": log.sample_steps, "height": resolution, "width": resolution,
              "num_images_per_prompt": log.num_images}
    kinds = (("samples", 1.0, False), ("samples_scaled", log.guidance_scale, False),
             ("init_word", log.guidance_scale, True))
    for key, scale, init in kinds:
        grid = []
        for placeholder, word in zip(p.placeholder_strings, p.initializer_words, strict=True):
            prompt = fill_prompt(template, word) if init else expand_placeholders(
                fill_prompt(template, placeholder), expansions)
            g = torch.Generator(device="cpu").manual_seed(seed)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                latents = pipe(prompt, guidance_scale=scale, generator=g, output_type="latent", **common).images
            # decoded outside autocast by the float32 VAE: SDXL's VAE overflows in fp16
            z = latents.to(vae.dtype) / vae.config.scaling_factor
            grid.append([to_pil(x) for x in vae.decode(z).sample.float().cpu()])
        save(key, grid_of(grid))


def _flipped(pixels: torch.Tensor, flip: int) -> torch.Tensor:
    return pixels.flip(-1) if flip else pixels


def to_pil(x: torch.Tensor):
    from PIL import Image

    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def text_image(text: str, side: int):
    """The prompt drawn as a picture, as the paper code's `conditioning` log does."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(img)
    draw.multiline_text((4, 4), "\n".join(textwrap.wrap(text, width=max(10, side // 7))), fill="black")
    return img


def grid_of(rows: list[list[Any]]) -> Any:
    """One row of tiles per placeholder; tiles take the first one's size, empty places stay white."""
    from PIL import Image

    first = next((pic for row in rows for pic in row), None)
    w, h = first.size if first is not None else (8, 8)
    grid = Image.new("RGB", (w * max(1, max(len(r) for r in rows)), h * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, pic in enumerate(row):
            grid.paste(pic.convert("RGB").resize((w, h)), (x * w, y * h))
    return grid


def plot_losses(csv_path: Path, png_path: Path) -> bool:
    """Loss per step and its running mean; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps, losses = [], []
    for line in csv_path.read_text().splitlines()[1:]:
        parts = line.split(",")
        with contextlib.suppress(ValueError, IndexError):
            steps.append(int(parts[0]))
            losses.append(float(parts[1]))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, lw=0.6, alpha=0.5, label="loss")
    if len(losses) >= 2:
        k = max(1, len(losses) // 20)
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True
