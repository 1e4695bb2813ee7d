"""A small SD3-shaped model of the toy world, fitted with flow matching: `python -m textinv.toy.flow DIR`.

What the SD3 and Flux.1 learning check runs on (no SD3 weights ship with textinv; SD3.5-medium is 5 GB in bf16):
SD3's architecture at toy size (`textinv.toy.pipeline.build_sd3_pipeline`: two CLIP encoders, a T5 encoder, an MMDiT,
the flow-matching scheduler), the shipped toy model's trained VAE, and an MMDiT fitted briefly, with the objective
textinv trains SD3 embeddings with (`textinv.training.objective`), to the toy world's captioned pictures through
SD3's conditioning (`textinv.models.conditioning`), except the held-out pair, as the toy model and the SDXL toy
were. The text encoders stay random and frozen. A brief fit: enough that the prompt changes what the MMDiT
predicts, not enough to draw clean shapes.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from textinv.toy import world
from textinv.toy.pipeline import PipelineShape, build_sd3_pipeline
from textinv.toy.sdxl import command, fitting_set

SHAPE = PipelineShape(vae_channels=(16, 32), norm_groups=8)


def build_sd3_toy(folder: str | Path, *, steps: int = 300, batch: int = 32, seed: int = 0):
    """Build, fit and save the SD3-shaped toy model into `folder`; returns the pipeline."""
    from diffusers import AutoencoderKL

    from textinv.models.conditioning import conditioning_for
    from textinv.models.source import toy_model_dir
    from textinv.training.objective import flow_matching

    torch.manual_seed(seed)
    toy_vae = AutoencoderKL.from_pretrained(toy_model_dir() / "vae")
    pipe = build_sd3_pipeline(world.vocabulary(), None, shape=SHAPE, seed=seed,
                              latent_channels=toy_vae.config.latent_channels)
    pipe.vae.load_state_dict(toy_vae.state_dict())
    pipe.vae.register_to_config(scaling_factor=toy_vae.config.scaling_factor, shift_factor=0.0)
    for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        module.requires_grad_(False)

    cond = conditioning_for(pipe, SHAPE.resolution)
    gen, latents, ids = fitting_set(pipe.vae, cond, seed)
    with torch.no_grad():
        encoded = [cond(ids[i:i + 64]) for i in range(0, len(ids), 64)]
        hidden = torch.cat([e["encoder_hidden_states"] for e in encoded])
        pooled = torch.cat([e["pooled_projections"] for e in encoded])
    objective = flow_matching(pipe.scheduler.config, "logit_normal", latents.shape[-1])
    transformer = pipe.transformer.train()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-3)
    for _ in range(steps):
        which = torch.randint(len(latents), (batch,), generator=gen)
        noise = torch.randn(batch, *latents.shape[1:], generator=gen)
        t = objective.timesteps(batch, gen)
        noisy, target = objective.noised(latents[which], noise, t)
        pred = transformer(hidden_states=noisy, timestep=t, encoder_hidden_states=hidden[which],
                           pooled_projections=pooled[which]).sample
        loss = F.mse_loss(pred, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    transformer.eval().requires_grad_(False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


main = command(build_sd3_toy, "MMDiT")

if __name__ == "__main__":
    main()
