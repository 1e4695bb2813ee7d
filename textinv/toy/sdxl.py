"""A small SDXL-shaped model of the toy world, built in a minute or two on a CPU: `python -m textinv.toy.sdxl DIR`.

No SDXL weights ship with textinv (SDXL is 7 GB), so this is what the README's SDXL commands and the SDXL learning
check run on. It has SDXL's architecture (two CLIP text encoders of different widths, the second with a projection
for the pooled embedding; a UNet with `addition_embed_type="text_time"`), the shipped toy model's trained VAE, and a
UNet fitted briefly to the toy world's captioned pictures through SDXL's conditioning (`textinv.models.conditioning`),
except the held-out pair, as the toy model was. The text encoders stay random and frozen, as in the toy model.
Too brief a fit to draw clean shapes; long enough that the prompt changes what the UNet predicts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from textinv.toy import world
from textinv.toy.pipeline import PipelineShape, build_sdxl_pipeline

SHAPE = PipelineShape(text_dim=32, unet_channels=(32, 64), vae_channels=(16, 32), norm_groups=8)


def build_sdxl_toy(folder: str | Path, *, steps: int = 300, batch: int = 32, seed: int = 0):
    """Build, fit and save the SDXL toy model into `folder`; returns the pipeline."""
    from diffusers import AutoencoderKL, DDPMScheduler

    from textinv.models.conditioning import conditioning_for
    from textinv.models.source import toy_model_dir

    torch.manual_seed(seed)
    pipe = build_sdxl_pipeline(world.vocabulary(), None, shape=SHAPE, seed=seed)
    toy_vae = AutoencoderKL.from_pretrained(toy_model_dir() / "vae")
    pipe.vae.load_state_dict(toy_vae.state_dict())
    pipe.vae.register_to_config(scaling_factor=toy_vae.config.scaling_factor)
    for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False)

    cond = conditioning_for(pipe, SHAPE.resolution)
    gen, latents, ids = fitting_set(pipe.vae, cond, seed)
    with torch.no_grad():
        hidden, added = zip(*(cond.encode(ids[i:i + 64]) for i in range(0, len(ids), 64)), strict=True)
        hidden = torch.cat(hidden)
        pooled = torch.cat([a["text_embeds"] for a in added])
    time_ids = added[0]["time_ids"][:1]
    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    unet = pipe.unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    for _ in range(steps):
        which = torch.randint(len(latents), (batch,), generator=gen)
        noise = torch.randn(batch, *latents.shape[1:], generator=gen)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch,), generator=gen)
        noisy = noise_schedule.add_noise(latents[which], noise, t)
        pred = unet(noisy, t, hidden[which],
                    added_cond_kwargs={"text_embeds": pooled[which], "time_ids": time_ids.expand(batch, -1)}).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    unet.eval().requires_grad_(False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


def fitting_set(vae, cond, seed: int) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
    """What the SDXL and SD3 toys are fitted to: the toy world's captioned pictures without the held-out pairs, as
    (the generator that drew their caption templates, which the fit goes on drawing from; their latents under `vae`;
    their captions' token ids under `cond`)."""
    import numpy as np

    pictures = list(world.sample(20 * len(world.pairs(include_held_out=False)), seed=seed, include_held_out=False))
    gen = torch.Generator().manual_seed(seed)
    prompts = [world.caption(c, s, world.TEMPLATES[int(torch.randint(len(world.TEMPLATES), (1,), generator=gen))])
               for _, c, s in pictures]
    with torch.no_grad():
        pixels = torch.stack([torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
                              .permute(2, 0, 1) for img, _, _ in pictures])
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    return gen, latents, cond.tokenize(prompts)


def command(build, fitted: str):
    """The command line of a toy builder: `python -m textinv.toy.<name> DIR [--steps N] [--pictures DIR]`."""
    def main(argv: list[str] | None = None) -> None:
        parser = argparse.ArgumentParser(description=sys.modules[build.__module__].__doc__.splitlines()[0])
        parser.add_argument("folder", type=Path, help="where to write the diffusers folder")
        parser.add_argument("--steps", type=int, default=300, help=f"{fitted} fitting steps")
        parser.add_argument("--pictures", type=Path, help="also write 4 pictures of the pair it never saw here")
        args = parser.parse_args(argv)
        build(args.folder, steps=args.steps)
        print(args.folder)
        if args.pictures:
            world.write_concept(args.pictures, *world.HELD_OUT[0], n=4)
            print(args.pictures)
    return main


main = command(build_sdxl_toy, "UNet")

if __name__ == "__main__":
    main()
