"""Memory that grows with the data set: the training images and their latent cache, by arithmetic and measured.

    python bench/latent_cache.py                       # 500 images at 512 px and 5 at 1024 px
    python bench/latent_cache.py --images 50 --resolution 768

textinv keeps each training image as float32 pixels [3, r, r] and, after one VAE pass, the latent mean and std of
the image and its mirror as float32 [2, 4, r/8, r/8] each (on the CPU in float16 when the cache passes 256 MiB).
The measurement runs textinv's own image loading and latent caching; the VAE is one of SD's layout (four levels,
4 latent channels) at a few channels wide, since the cache's size does not depend on the VAE's width and an
SD-width VAE takes seconds per image on a CPU.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

MIB = 2**20


def expected(n: int, resolution: int) -> tuple[float, float]:
    """(pixels, latent cache) in MiB for `n` images at `resolution`: float32 throughout."""
    from textinv.training.data import cache_bytes

    return n * 3 * resolution**2 * 4 / MIB, cache_bytes(n, 4, resolution // 8) / MIB


def _rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:")) / 1024


def measure(n: int, resolution: int) -> tuple[float, float, float]:
    """(pixels, latent cache, resident-memory growth) in MiB, measured on `n` random images."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL
    from PIL import Image

    from textinv.pictures import load_folder
    from textinv.training.data import cache_latents

    vae = AutoencoderKL(block_out_channels=(4, 4, 4, 4), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=2).eval()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="textinv-latent-cache-") as tmp:
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)).save(f"{tmp}/{i}.jpg")
        before = _rss_mib()
        images, _ = load_folder(tmp, resolution)
        cache = cache_latents(vae, images, torch.device("cpu"))
        grown = _rss_mib() - before
    pixels = sum(img.pixels.nbytes for img in images) / MIB
    return pixels, cache.nbytes / MIB, grown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, nargs="*", default=[500, 5])
    ap.add_argument("--resolution", type=int, nargs="*", default=[512, 1024])
    a = ap.parse_args()
    if len(a.images) != len(a.resolution):
        raise SystemExit("give as many --images counts as --resolution values")
    for n, r in zip(a.images, a.resolution, strict=True):
        want_px, want_lat = expected(n, r)
        px, lat, grown = measure(n, r)
        print(f"{n} images at {r} px: pixels {px:.1f} MiB (expected {want_px:.1f}), latent cache {lat:.1f} MiB "
              f"(float32: {want_lat:.1f}); resident memory grew {grown:.0f} MiB while loading and caching")


if __name__ == "__main__":
    main()
