"""Pictures of a run: the paper code's image logs (conditioning, inputs, reconstruction, samples, samples_scaled,
init_word), one row per placeholder, each picture enlarged to at least 128 px and labelled (its prompt, seed or
file) under a title with the step (`pictures.labelled_sheet`), with the same in words in the PNG's Description.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from textinv.atomic import atomic_path, write_text
from textinv.models.denoiser import decode
from textinv.models.tokens import expand_placeholders
from textinv.pictures import TrainImage, described, labelled_sheet, to_pil
from textinv.runs import Run
from textinv.training.data import Batches, fill_prompt, load_templates


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
def log_images(run: Run, step: int, model, log, p, images: list[TrainImage], batches: Batches, seed: int, *,
               say: Callable[[str], None] = lambda text: None) -> None:
    """Write the run's image log of every key at `step`, and the conditioning prompts drawn (.txt), one line per
    image, a blank line between placeholders. `model` is the training model (pipeline with the placeholders
    spliced in); `log` and `p` are the log and personalization config sections; `say` is told what is drawn."""
    pipe, expansions, resolution = model.pipe, model.expansions, model.resolution
    autocast_dtype, device = model.precision, model.device
    rows = logged_images(batches, len(p.placeholder_strings), log.num_images)

    def save(key: str, sheet, description: str) -> None:  # with what it shows in words, for a reader that cannot see
        with atomic_path(run.image_log(key, step)) as tmp:
            sheet.save(tmp, format="PNG", pnginfo=described(f"{key} at step {step}", description))

    say("drawing the conditioning, inputs and reconstruction")
    prompts = [[batches.items[i].prompts[c] for i, _, c in row] for row in rows]
    write_text(run.image_log("conditioning", step, ".txt"), "\n\n".join("\n".join(r) for r in prompts) + "\n")
    inputs = [[to_pil(_flipped(images[batches.items[i].image].pixels, f)) for i, f, _ in row] for row in rows]
    names = [[images[batches.items[i].image].path.name + (" (flipped)" if f else "") for i, f, _ in row]
             for row in rows]
    heads = [f"{ph} (init word {w})" for ph, w in zip(p.placeholder_strings, p.initializer_words, strict=True)]
    flat = "; ".join(t for r in prompts for t in r)
    save("conditioning", labelled_sheet(inputs, title=f"conditioning at step {step}: the prompt each picture was "
                                        "trained with", row_labels=heads, tile_labels=prompts),
         f"step {step}; prompts: {flat}")
    save("inputs", labelled_sheet(inputs, title=f"inputs at step {step}: the pictures trained on most recently",
                                  row_labels=heads, tile_labels=names), f"step {step}; pictures: {names}")
    vae = pipe.vae
    recon = []
    for row in rows:
        if not row:
            recon.append([])
            continue
        z, _ = batches.cache.lookup([batches.items[i].image for i, _, _ in row], [f for _, f, _ in row])
        recon.append([to_pil(x) for x in vae.decode(z.to(device, vae.dtype)).sample.float().cpu()])
    save("reconstruction", labelled_sheet(recon, title=f"reconstruction at step {step}: the inputs through the VAE",
                                          row_labels=heads, tile_labels=names), f"step {step}; pictures: {names}")

    template = load_templates(p.learnable_property)[0]
    n = log.num_images
    common = {"num_inference_steps": log.sample_steps, "height": resolution, "width": resolution,
              "num_images_per_prompt": n}
    kinds = (("samples", 1.0, False), ("samples_scaled", log.guidance_scale, False),
             ("init_word", log.guidance_scale, True))
    seeds = [f"seed {seed + i}" for i in range(n)]
    for key, scale, init in kinds:
        say(f"drawing {key}, {n * len(p.placeholder_strings)} images")
        grid, shown = [], []
        for placeholder, word in zip(p.placeholder_strings, p.initializer_words, strict=True):
            shown.append(fill_prompt(template, word if init else placeholder))
            prompt = shown[-1] if init else expand_placeholders(shown[-1], expansions)
            g = [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(n)]  # image i: seed + i
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                latents = pipe(prompt, guidance_scale=scale, generator=g, output_type="latent", **common).images
            # decoded outside autocast by the float32 VAE: SDXL's VAE overflows in fp16
            grid.append([to_pil(x) for x in decode(pipe, latents, resolution).float().cpu()])
        title = f"{key} at step {step}: guidance {scale:g}, {log.sample_steps} denoising steps"
        save(key, labelled_sheet(grid, title=title, row_labels=shown, tile_labels=[seeds] * len(grid)),
             f"step {step}; guidance {scale:g}; prompts: {'; '.join(shown)}; seeds {seed}-{seed + n - 1}")


def _flipped(pixels: torch.Tensor, flip: int) -> torch.Tensor:
    return pixels.flip(-1) if flip else pixels
