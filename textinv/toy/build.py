"""Train the shipped toy model from scratch: `python -m textinv.toy.build` (or `make toy-model`).

A Stable-Diffusion-shaped pipeline (AutoencoderKL, UNet2DConditionModel, CLIPTextModel, CLIPTokenizer, DDIM)
trained on the toy world from a fixed seed, saved as a diffusers folder of safetensors into textinv/toy/model/.

The order is the one Stable Diffusion was built in: the VAE first (on every pair), then the UNet on its
latents, conditioned on the text encoder's outputs. The text encoder stays as initialised (random and frozen):
its outputs already tell the words apart, and freezing it lets every caption be encoded once, before the loop,
instead of every step. The held-out pairs (world.HELD_OUT) are never shown to the UNet.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from textinv.toy import world
from textinv.toy.pipeline import PipelineShape, build_pipeline
from textinv.toy.tokenizer import write_clip_tokenizer

MODEL_DIR = Path(__file__).parent / "model"


def toy_shape() -> PipelineShape:
    """The shipped model's sizes: 32 px pictures, 16x16x4 latents, a 64-wide text encoder."""
    return PipelineShape(
        text_dim=64,
        text_layers=2,
        text_heads=4,
        unet_channels=(32, 64, 64),
        unet_layers_per_block=1,
        unet_head_dim=8,
        vae_channels=(16, 32),  # (32, 64) measured 7x slower per step on 2 busy cores
        latent_channels=4,
        norm_groups=8,
        resolution=world.SIZE,
    )


@dataclass
class BuildConfig:
    seed: int = 0
    images: int = 9600  # rendered pictures, 400 per pair; the VAE sees all pairs, the UNet all but the held-out ones
    vae_steps: int = 1000
    vae_batch: int = 64
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6  # SD's VAE uses a tiny KL term too: the latents stay close to the pixels
    unet_steps: int = 3600  # measured: at 2000 the shapes were right but colours mostly orange (33% of pairs right)
    unet_batch: int = 64
    unet_lr: float = 1e-3
    min_snr_gamma: float = 5.0  # Min-SNR loss weighting (Hang et al. 2023, arXiv:2303.09556): weighs the noisy steps,
    # where colour and shape are decided, more than the nearly clean ones
    warmup: int = 100
    uncond_prob: float = 0.1  # empty captions this often, so classifier-free guidance works
    threads: int = 1  # measured: on 2 busy cores one thread ran 1.7-4x faster than two; and one is reproducible
    shape: dict = field(default_factory=lambda: asdict(toy_shape()))


def save_slow_tokenizer_files(folder: Path) -> None:
    """Add vocab.json and merges.txt: transformers 5 saves only tokenizer.json, and the slow CLIPTokenizer of
    transformers 4.x (which pyproject allows) reads these two."""
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(world.vocabulary(), tmp)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(Path(tmp) / name, Path(folder) / name)


def freeze_posterior(vae, std: float = 0.01) -> None:
    """Make the encoder (nearly) deterministic: its log-variance becomes a constant, std `std`.

    The KL term is too small to pull the posterior's std down (it ends near 0.47 against a latent spread of 0.83),
    and the decoder learned to read through that noise. The UNet trains on latent means, and textual inversion
    (like SD's own training) encodes with `latent_dist.sample()`: with std 0.01 the two agree. Measured: before
    this, textual inversion on the toy model learned nothing (loss 0.54, 0/16 right).
    """
    conv = vae.quant_conv
    c = vae.config.latent_channels
    with torch.no_grad():
        conv.weight[c:] = 0
        conv.bias[c:] = 2 * math.log(std)


def _lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def _to_tensor(images: list) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def build(
    cfg: BuildConfig, out_dir: Path = MODEL_DIR, log: Callable[[str], None] = print, *, vae_from: Path | None = None
) -> dict:
    """Train the toy pipeline per `cfg`, save it into `out_dir`, and return what happened (times, losses, sizes).

    `vae_from`: a VAE folder saved by an earlier build with the same config, to skip the first stage (each stage is
    seeded on its own, so the result is the same)."""
    t_start = time.time()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    shape = PipelineShape(**{**cfg.shape, "unet_channels": tuple(cfg.shape["unet_channels"]),
                             "vae_channels": tuple(cfg.shape["vae_channels"])})
    pipe = build_pipeline(world.vocabulary(), None, shape=shape, seed=cfg.seed)
    vae, unet, text_encoder, tokenizer = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in
                [("vae", vae), ("unet", unet), ("text_encoder", text_encoder)]}
    log(f"parameters: {n_params}")

    rendered = list(world.sample(cfg.images, seed=cfg.seed))
    pixels = _to_tensor([im for im, _, _ in rendered])
    labels = [(c, s) for _, c, s in rendered]
    log(f"rendered {len(rendered)} pictures in {time.time() - t_start:.0f}s")

    # The VAE: reconstruction plus a little KL, on every pair.
    t0 = time.time()
    if vae_from is not None:
        vae.load_state_dict(type(vae).from_pretrained(vae_from).state_dict())
        log(f"VAE from {vae_from}")
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae_loss = float("nan")
    if vae_from is not None:
        with torch.no_grad():
            x = pixels[:256]
            vae_loss = F.mse_loss(vae.decode(vae.encode(x).latent_dist.mean).sample, x).item()
    for step in range(0 if vae_from is not None else cfg.vae_steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg.vae_steps, cfg.vae_lr, cfg.warmup)
        x = pixels[torch.randint(len(pixels), (cfg.vae_batch,))]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        rec = F.mse_loss(recon, x)
        loss = rec + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        vae_loss = 0.98 * vae_loss + 0.02 * rec.item() if step else rec.item()
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step}/{cfg.vae_steps} mse {vae_loss:.5f} ({time.time() - t0:.0f}s)")
    vae.eval()
    vae_seconds = time.time() - t0
    freeze_posterior(vae)
    vae.save_pretrained(Path(out_dir) / "vae", safe_serialization=True)  # to look at while the UNet trains

    # Latents of the UNet's pictures (every pair but the held-out ones), scaled to unit variance as SD's are.
    keep = [i for i, label in enumerate(labels) if label not in world.HELD_OUT]
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[keep[i:i + 256]]).latent_dist.mean for i in range(0, len(keep), 256)])
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    latents = latents * scale
    log(f"latents {tuple(latents.shape)}, scaling factor {scale:.4f}")

    # Every caption the UNet sees, encoded once by the frozen text encoder; index 0 is the empty caption.
    captions = [""] + [world.caption(c, s, t) for c, s in world.pairs(include_held_out=False) for t in world.TEMPLATES]
    with torch.no_grad():
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        text = torch.cat([text_encoder(ids[i:i + 128])[0] for i in range(0, len(ids), 128)])
    first_caption = {pair: 1 + k * len(world.TEMPLATES) for k, pair in enumerate(world.pairs(include_held_out=False))}
    caption_base = torch.tensor([first_caption[labels[i]] for i in keep])

    # The UNet: epsilon prediction on the scheduler's own noise schedule.
    t0 = time.time()
    torch.manual_seed(cfg.seed + 1)
    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas = noise_schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    weight = snr.clamp(max=cfg.min_snr_gamma) / snr  # epsilon prediction: min(SNR, gamma) / SNR
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.01)
    unet_loss = float("nan")
    for step in range(cfg.unet_steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg.unet_steps, cfg.unet_lr, cfg.warmup)
        idx = torch.randint(len(latents), (cfg.unet_batch,))
        which = caption_base[idx] + torch.randint(len(world.TEMPLATES), (cfg.unet_batch,))
        which[torch.rand(cfg.unet_batch) < cfg.uncond_prob] = 0
        x0 = latents[idx]
        noise = torch.randn_like(x0)
        t = torch.randint(noise_schedule.config.num_train_timesteps, (cfg.unet_batch,))
        pred = unet(noise_schedule.add_noise(x0, noise, t), t, encoder_hidden_states=text[which]).sample
        loss = (weight[t] * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        unet_loss = 0.98 * unet_loss + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == cfg.unet_steps - 1:
            log(f"unet step {step}/{cfg.unet_steps} loss {unet_loss:.4f} ({time.time() - t0:.0f}s)")
    unet.eval()
    unet_seconds = time.time() - t0

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    save_slow_tokenizer_files(out_dir / "tokenizer")
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    report = {
        "config": asdict(cfg),
        "held_out": [list(pair) for pair in world.HELD_OUT],
        "parameters": n_params,
        "vae_seconds": round(vae_seconds),
        "vae_from": str(vae_from) if vae_from else None,
        "unet_seconds": round(unet_seconds),
        "total_seconds": round(time.time() - t_start),
        "vae_mse": round(vae_loss, 5),
        "unet_loss": round(unet_loss, 4),
        "scaling_factor": scale,
        "torch_threads": cfg.threads,
        "size_bytes": size,
    }
    (out_dir / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"saved {out_dir} ({size / 1e6:.1f} MB) in {report['total_seconds']}s")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODEL_DIR, help="where to save the diffusers folder")
    parser.add_argument("--vae-steps", type=int, default=BuildConfig.vae_steps)
    parser.add_argument("--unet-steps", type=int, default=BuildConfig.unet_steps)
    parser.add_argument("--images", type=int, default=BuildConfig.images)
    parser.add_argument("--threads", type=int, default=BuildConfig.threads)
    parser.add_argument("--vae-from", type=Path, help="reuse the VAE folder of an earlier build with the same settings")
    args = parser.parse_args(argv)
    cfg = BuildConfig(vae_steps=args.vae_steps, unet_steps=args.unet_steps, images=args.images, threads=args.threads)
    build(cfg, args.out, log=lambda line: print(line, flush=True), vae_from=args.vae_from)


if __name__ == "__main__":
    main()
