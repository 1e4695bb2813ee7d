"""Training speed: textinv's steps/s, seconds per step split into parts, peak memory; optionally against the
diffusers example `examples/textual_inversion/textual_inversion.py`, run as published, in alternating rounds.

    python bench/train_speed.py                              # textinv only, a small SD-shaped model on the CPU
    python bench/train_speed.py --diffusers-script PATH      # + the diffusers example, alternating rounds
    python bench/train_speed.py --shape sd15 --resolution 512 --batch-size 1 --device cuda ...

The model is random (the cost of a step does not depend on the weights), built from real diffusers/transformers
classes with a CLIP-sized 49k-token vocabulary, so that an optimizer over the whole embedding matrix costs what it
costs on a real model. Each run is a fresh process; steps/s is measured between the first `--warmup` steps and the
last one, from timestamps taken at each optimizer step, so model loading and start-up are not counted. This
machine's speed drifts from minute to minute, so the rounds alternate and medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(tempfile.gettempdir()) / "textinv-bench"

SHAPES = {
    # about SD1.x's layout at a fraction of the width: fast enough for CPU rounds
    "small": dict(text_dim=256, text_layers=4, text_heads=4, unet_channels=(64, 128, 256), unet_layers_per_block=1,
                  unet_head_dim=32, vae_channels=(32, 64, 128, 128), norm_groups=32),
    # SD1.5's sizes: 768-wide 12-layer text encoder, 320-1280 UNet, 128-512 VAE (for a GPU)
    "sd15": dict(text_dim=768, text_layers=12, text_heads=12, unet_channels=(320, 640, 1280, 1280),
                 unet_layers_per_block=2, unet_head_dim=8, vae_channels=(128, 256, 512, 512), norm_groups=32),
}
VOCAB = 49408  # CLIP's


def build_model(shape: str, resolution: int) -> Path:
    folder = CACHE / f"{shape}-{resolution}"
    if (folder / "model_index.json").is_file():
        return folder
    from transformers import CLIPTextModel

    from textinv.toy.pipeline import PipelineShape, build_pipeline

    tmp = folder.with_suffix(".tmp")
    build_pipeline(["cat", "a", "photo", "of", "the"], tmp, shape=PipelineShape(resolution=resolution,
                                                                                **SHAPES[shape]), seed=0)
    # Pad the vocabulary to CLIP's 49408 entries (tokens no text reaches) and the embedding matrix with it, so that
    # an optimizer over the whole matrix costs what it costs on a real model.
    vocab_path = tmp / "tokenizer" / "vocab.json"
    vocab = json.loads(vocab_path.read_text())
    for i in range(VOCAB - len(vocab)):
        vocab[f"pad{i}</w>"] = len(vocab)
    vocab_path.write_text(json.dumps(vocab))
    (tmp / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)  # rebuilt from vocab.json + merges.txt on load
    te = CLIPTextModel.from_pretrained(tmp / "text_encoder")
    te.resize_token_embeddings(VOCAB)
    te.save_pretrained(tmp / "text_encoder")
    tmp.rename(folder)
    return folder


def make_images(folder: Path, n: int = 4) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (600, 700, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


# --- workers: one run each, in a fresh process, printing one JSON line ---------------------------------------


def _peak_memory(device: str) -> float:
    """Peak memory in MiB: the GPU's allocator peak, or this process's max resident set on the CPU."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_textinv(a: argparse.Namespace) -> dict:
    import torch

    from textinv import config as cfgmod
    from textinv.reporting import Reporter
    from textinv.train import train

    stamps: list[float] = []

    class Stamp(Reporter):
        def advance(self, task, done, **values):
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    cfg = cfgmod.build_config(None, [
        f"model.source={a.model}", f"data.paths=[{a.images}]", f"data.resolution={a.resolution}",
        f"data.batch_size={a.batch_size}", f"train.max_steps={a.steps}", "log.save_every=0", "log.image_every=0",
        f"log.output_dir={a.out}", "optim.learning_rate=5e-3", "optim.scale_lr=false", f"train.device={a.device}",
        f"train.mixed_precision={a.mixed_precision}", "personalization.initializer_words=[cat]", "train.seed=0",
    ])
    result = train(cfg, reporter=Stamp())
    return {"stamps": stamps, "losses": result.losses, "peak_mib": _peak_memory(a.device)}


def worker_diffusers(a: argparse.Namespace) -> dict:
    """Run the published script unchanged; only its tqdm bar's update() is wrapped to timestamp each step."""
    import runpy

    import torch
    import tqdm.auto

    stamps: list[float] = []
    original = tqdm.auto.tqdm.update

    def update(self, n=1):
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return original(self, n)

    losses: list[float] = []
    original_postfix = tqdm.auto.tqdm.set_postfix

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        if "loss" in kwargs:
            losses.append(float(kwargs["loss"]))
        return original_postfix(self, ordered_dict, refresh, **kwargs)

    tqdm.auto.tqdm.update = update
    tqdm.auto.tqdm.set_postfix = set_postfix
    # torchvision's PyPI wheel cannot load against a CPU-only torch here; the script uses nothing of it but
    # transforms.RandomHorizontalFlip, which this shim provides with torchvision's own semantics.
    shim = Path(a.out) / "shim"
    if not _has_torchvision():
        # load transformers and diffusers first, so that they see no torchvision and do not use the shim
        import diffusers  # noqa: F401
        import transformers.image_utils  # noqa: F401
        import transformers.modeling_utils  # noqa: F401
        from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
        from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

        (shim / "torchvision").mkdir(parents=True, exist_ok=True)
        (shim / "torchvision" / "__init__.py").write_text("")
        (shim / "torchvision" / "transforms.py").write_text(
            "import torch\nfrom PIL import Image\n\n"
            "class RandomHorizontalFlip:\n"
            "    def __init__(self, p=0.5):\n        self.p = p\n\n"
            "    def __call__(self, img):\n"
            "        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if torch.rand(1) < self.p else img\n"
        )
        sys.path.insert(0, str(shim))
    sys.argv = [a.diffusers_script,
                "--pretrained_model_name_or_path", a.model, "--train_data_dir", a.images,
                "--placeholder_token", "<bench>", "--initializer_token", "cat", "--learnable_property", "object",
                "--resolution", str(a.resolution), "--center_crop", "--train_batch_size", str(a.batch_size),
                "--max_train_steps", str(a.steps), "--learning_rate", "5e-3", "--lr_scheduler", "constant",
                "--lr_warmup_steps", "0", "--output_dir", str(Path(a.out) / "diffusers-out"),
                "--save_steps", "1000000", "--checkpointing_steps", "1000000", "--dataloader_num_workers", "0",
                "--seed", "0", "--mixed_precision", {"auto": "no"}.get(a.mixed_precision, a.mixed_precision),
                "--report_to", "tensorboard"]  # its default; accelerate skips it when tensorboard is absent
    if a.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        runpy.run_path(a.diffusers_script, run_name="__main__")
    finally:
        tqdm.auto.tqdm.update = original
        tqdm.auto.tqdm.set_postfix = original_postfix
    return {"stamps": stamps, "losses": losses, "peak_mib": _peak_memory(a.device)}


def _has_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


def parts(a: argparse.Namespace) -> dict[str, float]:
    """Seconds per step, split: what textinv's step does, and what the diffusers example does on top of it."""
    import torch

    from textinv.models import load_pipeline, resolve_device
    from textinv.tokens import SplicedEmbedding, add_new_tokens, replace_module

    device = resolve_device(a.device)
    pipe = load_pipeline(a.model, device=device, dtype=torch.float32)
    tok, te, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    for m in (te, unet, vae):
        m.requires_grad_(False)
    first = len(tok)
    add_new_tokens(tok, ["<b>"], first)
    base = te.get_input_embeddings()
    spliced = SplicedEmbedding(base, base.weight[:1].detach().clone(), first)
    replace_module(te, base, spliced)
    opt = torch.optim.AdamW([spliced.learned], lr=1e-3)
    b, r = a.batch_size, a.resolution
    pixels = torch.randn(b, 3, r, r, device=device)
    ids = tok(["a photo of <b>"] * b, padding="max_length", max_length=77, return_tensors="pt").input_ids.to(device)
    lat_shape = (b, unet.config.in_channels, r // 8, r // 8)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    timings: dict[str, list[float]] = {k: [] for k in ("text_encoder", "unet_forward", "backward",
                                                       "optimizer (textinv: the new rows)",
                                                       "vae_encode (diffusers only)",
                                                       "adamw_whole_matrix (diffusers only)")}
    full = torch.nn.Parameter(base.weight.detach().clone())
    full_opt = torch.optim.AdamW([full], lr=1e-3)
    for i in range(a.warmup + 5):
        sync()
        t0 = time.perf_counter()
        hidden = te(ids)[0]
        sync()
        t1 = time.perf_counter()
        pred = unet(torch.randn(lat_shape, device=device), torch.randint(0, 1000, (b,), device=device), hidden).sample
        sync()
        t2 = time.perf_counter()
        pred.float().pow(2).mean().backward()
        sync()
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t4 = time.perf_counter()
        with torch.no_grad():
            vae.encode(pixels).latent_dist.sample()
        sync()
        t5 = time.perf_counter()
        full.grad = torch.zeros_like(full)
        full.grad[-1] = 1.0
        full_opt.step()
        sync()
        t6 = time.perf_counter()
        if i >= a.warmup:
            for k, v in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
                timings[k].append(v)
    return {k: statistics.median(v) for k, v in timings.items()}


def _rate(stamps: list[float], warmup: int) -> float:
    s = stamps[warmup:]
    return (len(s) - 1) / (s[-1] - s[0])


def run_worker(kind: str, a: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--model", a.model, "--images", a.images,
           "--resolution", str(a.resolution), "--batch-size", str(a.batch_size), "--steps", str(a.steps),
           "--device", a.device, "--mixed-precision", a.mixed_precision, "--out", str(out),
           "--threads", str(a.threads)]
    if a.diffusers_script:
        cmd += ["--diffusers-script", a.diffusers_script]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{\"stamps\"")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{kind} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="diffusers folder (default: build a random one of --shape)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30, help="steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="steps not timed at the start of each run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (textinv, diffusers) x N")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mixed-precision", default="no", help="no | fp16 | bf16 (the same for both)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--diffusers-script", default=os.environ.get("DIFFUSERS_TI_SCRIPT"),
                    help="path to diffusers' examples/textual_inversion/textual_inversion.py "
                         "(default: $DIFFUSERS_TI_SCRIPT; without it only textinv runs)")
    ap.add_argument("--worker", choices=["textinv", "diffusers"], help=argparse.SUPPRESS)
    ap.add_argument("--images", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.worker:
        fn = worker_textinv if a.worker == "textinv" else worker_diffusers
        result = fn(a)
        print(json.dumps(result), flush=True)
        return

    CACHE.mkdir(parents=True, exist_ok=True)
    a.model = a.model or str(build_model(a.shape, a.resolution))
    a.images = str(make_images(CACHE / "images"))
    kinds = ["textinv"] + (["diffusers"] if a.diffusers_script else [])
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    peaks: dict[str, list[float]] = {k: [] for k in kinds}
    mean_losses: dict[str, list[float]] = {k: [] for k in kinds}
    print(f"model {a.model} ({a.shape if a.model.startswith(str(CACHE)) else 'given'}), resolution {a.resolution}, "
          f"batch {a.batch_size}, {a.steps} steps/run ({a.warmup} untimed), device {a.device}, "
          f"mixed precision {a.mixed_precision}, threads {a.threads or 'default'}", flush=True)
    for r in range(a.rounds):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as out:
                res = run_worker(kind, a, Path(out))
            rates[kind].append(_rate(res["stamps"], a.warmup))
            peaks[kind].append(res["peak_mib"])
            mean_losses[kind].append(statistics.mean(res["losses"]) if res.get("losses") else float("nan"))
            print(f"round {r + 1} {kind:9s} {rates[kind][-1]:.3f} steps/s  peak {res['peak_mib']:.0f} MiB  "
                  f"mean loss {mean_losses[kind][-1]:.4f}", flush=True)
    print()
    for kind in kinds:
        med = statistics.median(rates[kind])
        print(f"{kind:9s} median {med:.3f} steps/s ({1 / med:.3f} s/step) over {a.rounds} rounds; "
              f"peak memory {max(peaks[kind]):.0f} MiB; mean loss {statistics.mean(mean_losses[kind]):.4f}")
    if a.diffusers_script:
        ratio = statistics.median(rates["textinv"]) / statistics.median(rates["diffusers"])
        print(f"textinv / diffusers example: {ratio:.2f}x steps/s")
    print("\nseconds per step, by part (medians of 5 timed steps, in this process):")
    for k, v in parts(a).items():
        print(f"  {k:36s} {v:.4f}")


if __name__ == "__main__":
    main()
