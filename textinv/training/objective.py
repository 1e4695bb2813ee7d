"""The training loss of one draw: mean squared error against the target, weighted per sample by Min-SNR-gamma and
per latent pixel by the pictures' masks.

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

import torch
import torch.nn.functional as F


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
