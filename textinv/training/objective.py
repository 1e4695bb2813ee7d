"""What a training draw's noisy latents and target are, and how its loss is weighted: the objective the model was
trained with, behind one interface so that the loop and the validation loss do not know which.

- `DDPM` (SD1.x, SD2.x, SDXL): timesteps uniform over the scheduler's 1000, latents noised by diffusers'
  DDPMScheduler, the target the noise (epsilon) or v (v-prediction), every sample weighted alike unless
  `optim.min_snr_gamma` is set.
- `FlowMatching` (SD3/3.5, Flux.1): rectified flow, x_t = (1 - sigma) x_0 + sigma noise with the target
  noise - x_0, as diffusers' SD3 and Flux training scripts do. The sigmas are the model's scheduler's
  (FlowMatchEulerDiscreteScheduler: SD3's shifted by its `shift` 3.0; Flux.1's by the image size, `mu` from the
  number of 2x2 patches as FluxPipeline's `calculate_shift` gives it for the training resolution, which is also
  OneTrainer's `dynamic_timestep_shifting` in its Flux preset: modules/model/FluxModel.py:366-377). Which sigma a
  sample gets is drawn from the density the SD3 paper found best (arXiv 2403.03206 section 3.1, rf/lognorm(0.00,
  1.00)) through diffusers' `compute_density_for_timestep_sampling`, and the loss weighted by
  `compute_loss_weighting_for_sd3` (diffusers 0.42 src/diffusers/training_utils.py:366-408): `train.weighting_scheme`
  picks one of their schemes, logit_normal (the default of diffusers' SD3 scripts), mode (scale 1.29), none
  (uniform), or uniform sampling weighted by sigma_sqrt or cosmap.

Every random number comes from the run's generator, in the order `timesteps` draws them, so a resumed run draws
the same timesteps as one that never stopped.

The loss of a draw is the mean squared error against the target, weighted per sample (by the objective, or by
Min-SNR-gamma for DDPM) and per latent pixel by the pictures' masks.

Min-SNR-gamma (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting Strategy", arXiv:2303.09556,
section 4.2): with SNR(t) = alpha_bar_t / (1 - alpha_bar_t), a sample's loss is weighted by min(SNR, gamma) / SNR
for epsilon prediction and min(SNR, gamma) / (SNR + 1) for v-prediction, which caps the weight of the nearly clean
timesteps. The same formula as diffusers' `compute_snr` (src/diffusers/training_utils.py) and the `--snr_gamma`
block of its examples (examples/text_to_image/train_text_to_image.py), and invoke-training's
(src/invoke_training/_shared/stable_diffusion/min_snr_weighting.py), where gamma = 5 is the default for textual
inversion.

Masks: a mask is 1 on the concept and 0 elsewhere, at the latents' size. A sample's loss is the mean of its squared
errors over the masked latent pixels (every channel), so pixels outside the mask contribute nothing to the
gradient, and a small concept weighs as much as a large one (OneTrainer's `normalize_masked_area_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

LOGIT_MEAN, LOGIT_STD, MODE_SCALE = 0.0, 1.0, 1.29  # diffusers' SD3 and Flux scripts' defaults


class Objective(Protocol):
    name: str  # what RunResult.prediction_type reports: epsilon, v_prediction or flow_matching

    def timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n timesteps, on the scale the denoiser takes, drawn from `generator` (on the CPU)."""

    def noised(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> tuple:
        """(noisy latents, target) for clean `latents`, `noise` and `timesteps`."""

    def weights(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        """A loss weight per sample, or None when every sample counts alike."""


@dataclass
class DDPM:
    scheduler: Any  # diffusers' DDPMScheduler
    prediction: str  # epsilon | v_prediction

    @property
    def name(self) -> str:
        return self.prediction

    def timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=generator)

    def noised(self, latents, noise, timesteps):
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        target = noise if self.prediction == "epsilon" else self.scheduler.get_velocity(latents, noise, timesteps)
        return noisy, target

    def weights(self, timesteps):
        return None


@dataclass
class FlowMatching:
    sigmas: torch.Tensor  # float32 [num_train_timesteps], from pure noise (1) down
    weighting: str = "logit_normal"  # one of config.CHOICES['train.weighting_scheme']
    num_train_timesteps: int = 1000
    name: str = "flow_matching"

    def timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        u = compute_density_for_timestep_sampling(self.weighting, n, logit_mean=LOGIT_MEAN, logit_std=LOGIT_STD,
                                                  mode_scale=MODE_SCALE, generator=generator)
        index = (u * len(self.sigmas)).long().clamp(0, len(self.sigmas) - 1)
        return self.sigmas[index] * self.num_train_timesteps

    def noised(self, latents, noise, timesteps):
        sigma = (timesteps / self.num_train_timesteps).view(-1, *[1] * (latents.dim() - 1)).to(latents.dtype)
        return (1.0 - sigma) * latents + sigma * noise, noise - latents

    def weights(self, timesteps):
        if self.weighting not in ("sigma_sqrt", "cosmap"):
            return None
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        return compute_loss_weighting_for_sd3(self.weighting, timesteps.float() / self.num_train_timesteps)


def flow_matching(scheduler_config, weighting: str, latent_side: int) -> FlowMatching:
    """The flow-matching objective of a model whose scheduler has `scheduler_config`, trained at `latent_side`
    (latent pixels a side): its sigmas, shifted by the image size when the scheduler shifts dynamically (Flux.1)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    sigmas = scheduler.sigmas.float()
    c = scheduler.config
    if c.use_dynamic_shifting:  # FluxPipeline.calculate_shift, for (side / 2)^2 patches
        patches = (latent_side // 2) ** 2
        slope = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
        mu = patches * slope + c.base_shift - slope * c.base_image_seq_len
        sigmas = scheduler.time_shift(mu, 1.0, sigmas).float()
    return FlowMatching(sigmas=sigmas, weighting=weighting, num_train_timesteps=c.num_train_timesteps)



def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    a = alphas_cumprod.to(timesteps.device, torch.float32)[timesteps]
    return a / (1 - a)


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float,
                    prediction: str) -> torch.Tensor:
    """Each sample's loss weight: min(SNR, gamma) / SNR (epsilon) or min(SNR, gamma) / (SNR + 1) (v_prediction)."""
    s = snr(alphas_cumprod, timesteps)
    capped = s.clamp(max=gamma)
    return capped / s if prediction == "epsilon" else capped / (s + 1)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, *, weights: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """The mean over samples of (weight x the sample's mean squared error over its masked pixels). Without
    weights and mask this is F.mse_loss(pred, target)."""
    if weights is None and mask is None:
        return F.mse_loss(pred.float(), target.float())
    err = (pred.float() - target.float()).pow(2)
    if mask is None:
        per_sample = err.flatten(1).mean(dim=1)
    else:
        m = mask.to(err.dtype).expand_as(err)
        per_sample = (err * m).flatten(1).sum(dim=1) / m.flatten(1).sum(dim=1).clamp(min=1e-8)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    return per_sample.mean()
