"""Pictures of a run: the paper code's image logs (conditioning, inputs, reconstruction, samples, samples_scaled,
init_word), one row per placeholder.
"""

from __future__ import annotations

import torch

from textinv.atomic import atomic_path, write_text
from textinv.models.denoiser import decode
from textinv.models.tokens import expand_placeholders
from textinv.pictures import TrainImage, grid_of, text_image, to_pil
from textinv.runs import Run
from textinv.training.data import Batches, fill_prompt, load_templates

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
def log_images(run: Run, step: int, model, log, p, images: list[TrainImage], batches: Batches, seed: int) -> None:
    """Write the run's image log of every key at `step`, and the conditioning prompts drawn (.txt), one line per
    image, a blank line between placeholders. `model` is the training model (pipeline with the placeholders
    spliced in); `log` and `p` are the log and personalization config sections."""
    from PIL import Image

    pipe, expansions, resolution = model.pipe, model.expansions, model.resolution
    autocast_dtype, device = model.precision, model.device
    rows = logged_images(batches, len(p.placeholder_strings), log.num_images)

    def save(key: str, grid: Image.Image) -> None:
        with atomic_path(run.image_log(key, step)) as tmp:
            grid.save(tmp, format="PNG")

    prompts = [[batches.items[i].prompts[c] for i, _, c in row] for row in rows]
    write_text(run.image_log("conditioning", step, ".txt"), "\n\n".join("\n".join(r) for r in prompts) + "\n")
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
            grid.append([to_pil(x) for x in decode(pipe, latents, resolution).float().cpu()])
        save(key, grid_of(grid))


def _flipped(pixels: torch.Tensor, flip: int) -> torch.Tensor:
    return pixels.flip(-1) if flip else pixels
