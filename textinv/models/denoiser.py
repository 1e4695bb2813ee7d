"""The network that denoises, as one call for every architecture: `denoiser(noisy_latents, timesteps, condition)`
-> its prediction, in the latents' own [batch, channels, h, w] layout. A UNet (SD1.x, SD2.x, SDXL) takes the
conditioning's keyword arguments as they are; SD3's MMDiT takes the timesteps on the scheduler's 0-1000 scale; Flux.1's
transformer takes them on 0-1, packs the latents into 2x2 patches (with their position ids) and, for the guidance-
distilled Flux.1-dev, a guidance value, as diffusers' Flux training scripts call it
(examples/advanced_diffusion_training/train_dreambooth_lora_flux_advanced.py:2214-2245, diffusers 58eb52c).

Also here: how the latents of an architecture are scaled (SD3's and Flux.1's VAEs have a shift as well as a scale),
the picture side a pipeline makes by default, and how many pixels a side must be a multiple of.
"""

from __future__ import annotations

import torch

from textinv.models.conditioning import kind_of

FLUX_GUIDANCE = 1.0  # OneTrainer's default for its Flux trainers (modules/util/config/TrainConfig.py:309)


class Denoiser:
    """A UNet: `unet(noisy, t, **condition).sample`. The network's own attributes (`config`, `attn_processors`)
    read through the wrapper."""

    module: torch.nn.Module

    def __init__(self, pipe):
        self.module = pipe.unet

    def __call__(self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: dict) -> torch.Tensor:
        return self.module(noisy, timesteps, **condition).sample

    def __getattr__(self, name: str):
        if name == "module":  # not set yet: no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.module, name)


class SD3Denoiser(Denoiser):
    def __init__(self, pipe):
        self.module = pipe.transformer

    def __call__(self, noisy, timesteps, condition):
        return self.module(hidden_states=noisy, timestep=timesteps, **condition).sample


class FluxDenoiser(Denoiser):
    """Flux.1: latents packed into 2x2 patches with their (0, row, column) ids; the guidance input when the model
    was guidance-distilled (Flux.1-dev), none for Flux.1-schnell."""

    def __init__(self, pipe, guidance: float = FLUX_GUIDANCE):
        self.module = pipe.transformer
        self.guidance = guidance if self.module.config.guidance_embeds else None

    def __call__(self, noisy, timesteps, condition):
        from diffusers import FluxPipeline

        b, c, h, w = noisy.shape
        packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
        ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, noisy.dtype)
        guidance = None if self.guidance is None else torch.full((b,), self.guidance, device=noisy.device)
        out = self.module(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance, img_ids=ids,
                          **condition).sample
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def denoiser_for(pipe, *, guidance: float = FLUX_GUIDANCE) -> Denoiser:
    kind = kind_of(pipe)
    if kind == "sd3":
        return SD3Denoiser(pipe)
    return FluxDenoiser(pipe, guidance) if kind == "flux" else Denoiser(pipe)


def latent_shift(vae) -> float | None:
    """The VAE's latent shift (SD3, Flux.1: latents are (z - shift) * scale), None for SD's (z * scale)."""
    return getattr(vae.config, "shift_factor", None)


def default_side(pipe) -> int:
    """The picture side the pipeline makes when not told: its `default_sample_size` (SDXL, SD3, Flux.1) or its
    UNet's sample size, in pixels."""
    size = getattr(pipe, "default_sample_size", None) or pipe.unet.config.sample_size
    return size * pipe.vae_scale_factor


def side_multiple(pipe) -> int:
    """What a picture side must be a multiple of: the VAE's downsampling times the UNet's (SD) or times the
    transformer's 2x2 patches (SD3's patch size, Flux.1's packing)."""
    vae = pipe.vae
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if kind_of(pipe) in ("sd3", "flux"):
        return vae_factor * getattr(pipe.transformer.config, "patch_size", 2) * (2 if kind_of(pipe) == "flux" else 1)
    return vae_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


def decode(pipe, latents: torch.Tensor, side: int) -> torch.Tensor:
    """Pictures in [-1, 1] from a pipeline's `output_type="latent"` output for `side`-pixel pictures, through its
    VAE in the VAE's own dtype: unpacked (Flux.1), unscaled and unshifted (SD3, Flux.1) as the pipeline would."""
    vae = pipe.vae
    if kind_of(pipe) == "flux":
        latents = pipe._unpack_latents(latents, side, side, pipe.vae_scale_factor)
    z = latents.to(vae.dtype) / vae.config.scaling_factor
    shift = latent_shift(vae)
    return vae.decode(z if shift is None else z + shift).sample
