"""One training step of SD3.5- and Flux.1-dev-shaped random models: seconds and peak memory, textinv's way (bf16
weights, gradient checkpointing, cached latents, T5's outputs computed once per prompt), and optionally diffusers'
advanced Flux script in pure textual-inversion mode (`--train_text_encoder_ti --train_transformer_frac 0`), run as
published, in alternating rounds.

    python bench/flow_step.py                                       # sd3.5-medium (24 blocks) and flux-dev (3, 6)
    python bench/flow_step.py --shape flux-dev --blocks 3,6 --diffusers-repo CLONE --resolution 256
    python bench/flow_step.py --shape sd3.5-large --blocks 2,4      # then extrapolated to its 38 blocks

The models are random (a step costs what it costs whatever the weights) with the published widths
(bench/flow_models.py). A model too large for the machine is built with fewer transformer blocks, twice (`--blocks
a,b`), and the full depth is extrapolated linearly: per block, memory and seconds grow by (value(b) - value(a)) /
(b - a). T5-XXL is built with 2 of its 24 layers: textinv runs it once per prompt, so its depth costs only its
weights (4.8B parameters, 9.5 GB in bf16), which the table adds from their size. Peak memory is the process's maximum
resident set on the CPU (the allocator's peak on a GPU); seconds per step are the median between optimizer steps
after the first (warm-up) one.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import flow_models

DIFFUSERS_COMMIT = "58eb52c0803ea9af3abec60841c2a093bdf1f951"
FLUX_SCRIPT = "examples/advanced_diffusion_training/train_dreambooth_lora_flux_advanced.py"
T5_XXL_LAYERS = 24
T5_ROWS_B = flow_models.T5_ROWS * 4096 / 1e9  # T5-XXL's token table, billions of parameters


def _peak_mib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_textinv(a: argparse.Namespace) -> dict:
    import torch

    from textinv import config as cfgmod
    from textinv.reporting import Reporter
    from textinv.training.loop import train

    stamps: list[float] = []

    class Stamp(Reporter):
        def advance(self, task, done, **values):
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    cfg = cfgmod.build_config(None, [
        f"model.source={a.model}", f"data.paths=[{a.images}]", f"data.resolution={a.resolution}", "data.batch_size=1",
        "optim.gradient_accumulation_steps=1", f"train.max_steps={a.steps}", "log.save_every=0", "log.image_every=0",
        "log.val_loss_every=0", f"log.output_dir={a.out}", f"train.device={a.device}",
        f"train.mixed_precision={a.mixed_precision}", "train.gradient_checkpointing=true", "train.seed=0",
        "personalization.initializer_words=[cat]", f"personalization.train_t5={str(a.train_t5).lower()}",
    ])
    result = train(cfg, reporter=Stamp())
    return {"stamps": stamps, "losses": result.losses, "peak_mib": _peak_mib(a.device)}


def worker_diffusers(a: argparse.Namespace) -> dict:
    """The published script, unchanged; only its "Steps" tqdm bar's update() is wrapped to timestamp each step."""
    import runpy

    import torch
    import tqdm.auto

    stamps: list[float] = []
    original = tqdm.auto.tqdm.update

    def update(self, n=1):  # the training bar only ("Steps"), not the loading and caching ones
        if getattr(self, "desc", "") == "Steps":
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
        return original(self, n)

    tqdm.auto.tqdm.update = update
    _torchvision_shim(Path(a.out) / "shim")
    sys.argv = [a.script, f"--pretrained_model_name_or_path={a.model}", f"--instance_data_dir={a.images}",
                "--instance_prompt=a photo of TOK", "--token_abstraction=TOK", "--num_new_tokens_per_abstraction=1",
                "--train_text_encoder_ti", "--train_transformer_frac=0", "--train_text_encoder_ti_frac=1", f"--resolution={a.resolution}",
                "--train_batch_size=1", f"--max_train_steps={a.steps}", "--cache_latents", "--gradient_checkpointing",
                "--center_crop", "--report_to=tensorboard",
                f"--mixed_precision={a.mixed_precision}", f"--output_dir={a.out}", "--seed=0",
                "--checkpointing_steps=100000", "--dataloader_num_workers=0"] + (["--enable_t5_ti"] if a.train_t5 else [])
    runpy.run_path(a.script, run_name="__main__")
    return {"stamps": stamps, "losses": [], "peak_mib": _peak_mib(a.device)}


# torchvision's PyPI wheel does not load against the CPU build of torch here (bench/train_speed.py says the same);
# the script uses only these transforms of it, given here with torchvision's semantics for what the bench passes.
_SHIM = """import enum
import numpy as np
import torch
from PIL import Image


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"


_PIL = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


class Resize:
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
        self.size, self.mode = size, _PIL[interpolation.value]

    def __call__(self, img):
        w, h = img.size
        s = self.size / min(w, h)
        return img.resize((round(w * s), round(h * s)), self.mode)


class CenterCrop:
    def __init__(self, size):
        self.size = size

    def __call__(self, img):
        w, h = img.size
        x, y = int(round((w - self.size) / 2)), int(round((h - self.size) / 2))
        return img.crop((x, y, x + self.size, y + self.size))


RandomCrop = CenterCrop


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, img):
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if torch.rand(1) < self.p else img


class ToTensor:
    def __call__(self, img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = mean[0], std[0]

    def __call__(self, t):
        return (t - self.mean) / self.std


class Compose:
    def __init__(self, steps):
        self.steps = steps

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x
"""


def _torchvision_shim(folder: Path) -> None:
    try:
        import torchvision  # noqa: F401
        return
    except Exception:
        pass
    import diffusers  # noqa: F401  (loaded first, so that they see no torchvision and do not use the shim)
    import transformers.image_utils  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    (folder / "torchvision" / "transforms").mkdir(parents=True, exist_ok=True)
    (folder / "torchvision" / "__init__.py").write_text("")
    (folder / "torchvision" / "transforms" / "__init__.py").write_text(_SHIM)
    (folder / "torchvision" / "transforms" / "functional.py").write_text(
        "def crop(img, top, left, height, width):\n    return img.crop((left, top, left + width, top + height))\n")
    sys.path.insert(0, str(folder))


def _run(program: str, model: Path, a: argparse.Namespace, script: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="textinv-flowbench-") as out:
        cmd = [sys.executable, __file__, "--worker", program, "--model", str(model), "--images", str(a.images),
               "--out", out, "--resolution", str(a.resolution), "--steps", str(a.steps), "--device", a.device,
               "--mixed-precision", a.mixed_precision] + (["--train-t5"] if a.train_t5 else [])
        if script:
            cmd += ["--script", str(script)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    gaps = [b - a for a, b in zip(data["stamps"], data["stamps"][1:], strict=False)]  # steps 2.. (1 warms up)
    data["s_per_step"] = statistics.median(gaps) if gaps else None
    return data


def _images(folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", action="append", choices=list(flow_models.SHAPES))
    p.add_argument("--blocks", default=None, help="transformer blocks to build, e.g. 3,6 (default: all for "
                   "sd3.5-medium, 3,6 for flux-dev, 2,4 for sd3.5-large)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run (the first is the warm-up)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--mixed-precision", default="bf16")
    p.add_argument("--train-t5", action="store_true", help="train the T5 part too (diffusers: --enable_t5_ti)")
    p.add_argument("--t5-layers", type=int, default=2, help="T5-XXL layers to build (24: all, on a large machine)")
    p.add_argument("--diffusers-repo", help="a git clone of huggingface/diffusers: also run its advanced Flux script")
    p.add_argument("--programs", default="textinv,diffusers", help="which to run (diffusers: with --diffusers-repo)")
    p.add_argument("--worker"), p.add_argument("--model"), p.add_argument("--images"), p.add_argument("--out")
    p.add_argument("--script")
    a = p.parse_args()
    if a.worker:
        print(json.dumps((worker_textinv if a.worker == "textinv" else worker_diffusers)(a)))
        return
    a.images = _images(Path(tempfile.gettempdir()) / "textinv-flowbench-images")
    script = None
    if a.diffusers_repo:
        script = Path(tempfile.gettempdir()) / "train_dreambooth_lora_flux_advanced.py"
        shown = subprocess.run(["git", "-C", a.diffusers_repo, "show", f"{DIFFUSERS_COMMIT}:{FLUX_SCRIPT}"],
                               capture_output=True, text=True, check=True)
        script.write_text(shown.stdout)
    defaults = {"sd3.5-medium": "24", "flux-dev": "3,6", "sd3.5-large": "2,4"}
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {a.resolution} px, batch 1, {a.mixed_precision}, {a.device}, "
          f"load {open('/proc/loadavg').read().split()[0]}")
    for shape in a.shape or ["sd3.5-medium", "flux-dev"]:
        blocks = [int(b) for b in (a.blocks or defaults[shape]).split(",")]
        programs = [x for x in a.programs.split(",")
                    if x == "textinv" or (x == "diffusers" and script and flow_models.SHAPES[shape]["kind"] == "flux")]
        rows: dict[tuple[str, int], list[dict]] = {}
        for _ in range(a.rounds):
            for b in blocks:
                model = flow_models.build(shape, b, a.t5_layers)
                for program in programs:
                    rows.setdefault((program, b), []).append(_run(program, model, a, script))
        raw = Path(tempfile.gettempdir()) / f"textinv-flowbench-{shape}.json"
        raw.write_text(json.dumps({f"{k[0]} {k[1]}": v for k, v in rows.items()}))  # the runs, whatever follows
        print(f"# raw runs: {raw}")
        _report(shape, blocks, programs, rows, a.t5_layers)


def _report(shape: str, blocks: list[int], programs: list[str], rows: dict, t5_layers: int) -> None:
    full = flow_models.SHAPES[shape]["blocks"]
    sizes = {b: flow_models.parameters(flow_models.build(shape, b, t5_layers)) for b in blocks}
    t5 = "text_encoder_3" if flow_models.SHAPES[shape]["kind"] == "sd3" else "text_encoder_2"
    for program in programs:
        for b in blocks:
            runs = [r for r in rows[(program, b)] if "error" not in r]
            if not runs:
                print(f"{shape} {program} {b} blocks: failed: {rows[(program, b)][0]['error']}")
                continue
            s = statistics.median(r["s_per_step"] for r in runs)
            mib = statistics.median(r["peak_mib"] for r in runs)
            print(f"{shape} {program} {b}/{full} blocks: transformer {sizes[b]['transformer']:.2f}B, {s:.2f} s/step, "
                  f"peak {mib / 1024:.1f} GiB")
        if len(blocks) == 2:
            a_, b_ = blocks
            ra = [r for r in rows[(program, a_)] if "error" not in r]
            rb = [r for r in rows[(program, b_)] if "error" not in r]
            if ra and rb:
                per_s = (statistics.median(r["s_per_step"] for r in rb) - statistics.median(r["s_per_step"] for r in ra)) / (b_ - a_)
                per_mib = (statistics.median(r["peak_mib"] for r in rb) - statistics.median(r["peak_mib"] for r in ra)) / (b_ - a_)
                s_full = statistics.median(r["s_per_step"] for r in rb) + per_s * (full - b_)
                mib_full = statistics.median(r["peak_mib"] for r in rb) + per_mib * (full - b_)
                per_layer = (sizes[b_][t5] - T5_ROWS_B) / t5_layers  # billions of parameters in each built layer
                t5_missing = per_layer * (T5_XXL_LAYERS - t5_layers) * 2  # GB of bf16: the layers not built
                print(f"{shape} {program} extrapolated to {full} blocks: {s_full:.1f} s/step, peak "
                      f"{mib_full / 1024:.1f} GiB + {t5_missing:.1f} GB for T5's other {T5_XXL_LAYERS - t5_layers} "
                      "layers")


if __name__ == "__main__":
    main()
