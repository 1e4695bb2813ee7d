"""Training speed: textinv's steps/s, time to the first step, peak memory and seconds per step split into parts;
optionally against the diffusers example `examples/textual_inversion/textual_inversion.py`, run as published, in
alternating rounds.

    python bench/train_speed.py                                   # textinv only, a small SD-shaped model, CPU
    python bench/train_speed.py --diffusers-repo CLONE            # + the example, taken from a diffusers clone
    python bench/train_speed.py --shape sd15 --resolution 512 --diffusers-repo CLONE --programs textinv,diffusers,textinv-gc
    python bench/train_speed.py --shape sd2 --resolution 768 --diffusers-repo CLONE
    python bench/train_speed.py --shape sdxl --resolution 256 --diffusers-repo CLONE    # + textinv_inversion_sdxl.py
    python bench/train_speed.py --shape sd15 --programs textinv,diffusers,textinv-budget --max-memory 3.5 ...
    bench/gpu_check.sh                                            # SD1.5 shape, 512 px, bf16, on a CUDA machine
    SHAPE=sdxl bench/gpu_check.sh                                 # SDXL shape, 1024 px

The model is random (the cost of a step does not depend on the weights), built from real diffusers/transformers
classes of the real architectures' sizes with CLIP's 49k-token vocabulary (bench/random_models.py). Each run is a
fresh process; steps/s is measured between the first `--warmup` steps and the last one, from timestamps taken at
each optimizer step, so model loading and start-up are not counted; the time to the first step counts from the
process's launch to the end of its first optimizer step. Peak memory is the process's maximum resident set on the
CPU (the allocator's peak on a GPU); "above the weights and libraries" subtracts the model files' size and the
process's memory after importing torch, diffusers and transformers. This machine's speed drifts from minute to
minute, so the rounds alternate and medians are reported.

A textinv program's name may carry settings after a dash: `-gc` gradient checkpointing, `-bf16` frozen weights in
bf16 (train.mixed_precision bf16), `-offload` the VAE offloaded once the latents are cached, `-budget`
train.max_memory set to --max-memory; e.g. `textinv-bf16-gc`. The example's: `-gc` (--gradient_checkpointing;
the SDXL example checkpoints only its text encoders) and `-bf16` (--mixed_precision bf16). Each run also reports
its start-up in parts (libraries imported, model loaded, first VAE encode done, first step done), in wall and CPU
seconds from the process's launch (CPU seconds move less with the machine's load).
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

import random_models

DIFFUSERS_COMMIT = "58eb52c0803ea9af3abec60841c2a093bdf1f951"  # the example scripts as measured in the README
EXAMPLE_PATHS = {"sd": "examples/textual_inversion/textual_inversion.py",
                 "sdxl": "examples/textual_inversion/textual_inversion_sdxl.py"}
SETTINGS = {"textinv": ("gc", "bf16", "offload", "budget"), "diffusers": ("gc", "bf16")}  # program-name suffixes


def make_images(folder: Path, n: int = 4) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (600, 700, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def extract_example(repo: str, commit: str, into: Path, family: str = "sd") -> Path:
    """Write diffusers' textual-inversion example for `family` (sd or sdxl), as of `commit`, from a git clone of
    diffusers into `into`."""
    example = EXAMPLE_PATHS[family]
    proc = subprocess.run(["git", "-C", repo, "show", f"{commit}:{example}"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cannot read {example} at {commit} from {repo}: {proc.stderr.strip()}")
    path = into / Path(example).name
    path.write_text(proc.stdout)
    return path


def program_settings(kind: str) -> tuple[str, set[str]]:
    """`textinv-bf16-gc` -> ("textinv", {"bf16", "gc"}); an unknown program or setting is an error."""
    name, *flags = kind.split("-")
    if name not in SETTINGS or not set(flags) <= set(SETTINGS[name]):
        raise SystemExit(f"unknown program {kind}: textinv or diffusers, followed by any of "
                         + "; ".join(f"{k}: -{' -'.join(v)}" for k, v in SETTINGS.items()))
    return name, set(flags)


# --- workers: one run each, in a fresh process, printing one JSON line ---------------------------------------


def _peak_memory(device: str) -> float:
    """Peak memory in MiB: the GPU's allocator peak, or this process's max resident set on the CPU."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _base_memory(device: str) -> float:
    """Memory in MiB before any model is loaded (the libraries' own, on the CPU): subtracted to get what training
    needs above the model's weights."""
    if device.startswith("cuda"):
        return 0.0
    import diffusers  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    status = Path("/proc/self/status").read_text()
    return next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:")) / 1024


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class StartUp:
    """When (wall clock, and CPU seconds of this process) each part of the start-up ended: libraries imported,
    model loaded, first VAE encode done, first step done."""

    def __init__(self):
        self.marks: dict[str, tuple[float, float]] = {}

    def mark(self, part: str) -> None:
        self.marks.setdefault(part, (time.time(), _cpu()))

    def wrap(self, owner, name: str, part: str) -> None:
        """Mark `part` when `owner.name` (a module's function, a method, or a classmethod bound to `owner`) first
        returns."""
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            out = original(*args, **kwargs)
            self.mark(part)
            return out

        setattr(owner, name, wrapper)


def _result(stamps: list[float], first_wall: list[float], losses: list[float], base: float, device: str,
            start: StartUp) -> dict:
    return {"stamps": stamps, "first_step_at": first_wall[0] if first_wall else None, "losses": losses,
            "peak_mib": _peak_memory(device), "base_mib": base, "marks": start.marks}


def _textinv_precision(mixed_precision: str, flags: set[str]) -> str:
    """-bf16 asks for bf16; a -budget run leaves `auto` (textinv's default) where the bench says `no`, so that
    the budget may choose bf16 weights."""
    if "bf16" in flags:
        return "bf16"
    return "auto" if "budget" in flags and mixed_precision == "no" else mixed_precision


def worker_textinv(a: argparse.Namespace) -> dict:
    import torch

    from textinv import config as cfgmod
    from textinv.reporting import Reporter
    from textinv.training import data, setup
    from textinv.training.loop import train

    start = StartUp()
    base = _base_memory(a.device)
    start.mark("imported")
    start.wrap(setup, "prepare_model", "loaded")
    start.wrap(data.LatentCache, "lookup", "encoded")
    stamps: list[float] = []
    first_wall: list[float] = []
    messages: list[str] = []

    class Stamp(Reporter):
        def advance(self, task, done, **values):
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            first_wall[:] = first_wall or [time.time()]
            start.mark("first step")

        def message(self, text):
            messages.append(text)

    _, flags = program_settings(a.worker)
    sets = [f"model.source={a.model}", f"data.paths=[{a.images}]", f"data.resolution={a.resolution}",
            f"data.batch_size={a.batch_size}", f"train.max_steps={a.steps}", "log.save_every=0",
            "log.image_every=0", f"log.output_dir={a.out}", "optim.learning_rate=5e-3", "optim.scale_lr=false",
            f"train.device={a.device}", "personalization.initializer_words=[cat]", "train.seed=0",
            f"train.mixed_precision={_textinv_precision(a.mixed_precision, flags)}",
            f"train.gradient_checkpointing={str('gc' in flags).lower()}", f"train.offload={str('offload' in flags).lower()}"]
    if "budget" in flags:
        sets.append(f"train.max_memory={a.max_memory}")
    if a.shape == "sdxl":
        sets += ["model.family=SDXL", "optim.gradient_accumulation_steps=1"]
    result = train(cfgmod.build_config(None, sets), reporter=Stamp())
    out = _result(stamps, first_wall, result.losses, base, a.device, start)
    out["messages"] = [m for m in messages if m.startswith("memory budget")]
    return out


def worker_diffusers(a: argparse.Namespace) -> dict:
    """Run the published script unchanged; only its tqdm bar's update() is wrapped to timestamp each step (the bar
    it names "Steps": transformers' and diffusers' loading bars are tqdm bars too)."""
    import runpy

    import torch
    import tqdm.auto

    start = StartUp()
    base = _base_memory(a.device)
    start.mark("imported")
    from diffusers import AutoencoderKL, UNet2DConditionModel

    start.wrap(UNet2DConditionModel, "from_pretrained", "loaded")  # the last model each example loads
    start.wrap(AutoencoderKL, "encode", "encoded")
    stamps: list[float] = []
    first_wall: list[float] = []
    original = tqdm.auto.tqdm.update

    def update(self, n=1):
        if getattr(self, "desc", "") != "Steps":  # the examples' training bar; loading bars update too
            return original(self, n)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        first_wall[:] = first_wall or [time.time()]
        start.mark("first step")
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
            "        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if torch.rand(1) < self.p else img\n\n"
            "class CenterCrop:  # the SDXL example's, with --center_crop (on an image already resized to size)\n"
            "    def __init__(self, size):\n        self.size = size\n\n"
            "    def __call__(self, img):\n"
            "        left, top = round((img.width - self.size) / 2), round((img.height - self.size) / 2)\n"
            "        return img.crop((left, top, left + self.size, top + self.size))\n"
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
    _, flags = program_settings(a.worker)
    if "gc" in flags:
        sys.argv.append("--gradient_checkpointing")
    if "bf16" in flags:
        sys.argv[sys.argv.index("--mixed_precision") + 1] = "bf16"
    if a.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        runpy.run_path(a.diffusers_script, run_name="__main__")
    finally:
        tqdm.auto.tqdm.update = original
        tqdm.auto.tqdm.set_postfix = original_postfix
    return _result(stamps, first_wall, losses, base, a.device, start)


def _has_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


def parts(a: argparse.Namespace) -> dict[str, float]:
    """Seconds per step, split: what textinv's step does, and what the diffusers example does on top of it."""
    import torch

    from textinv.models.loading import load_pipeline, resolve_device
    from textinv.models.tokens import SplicedEmbedding, add_new_tokens, replace_module

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


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _median_first(rs: list[dict], which: int) -> float:
    return statistics.median(r["parts"]["first step"][which] for r in rs)


def _rate(stamps: list[float], warmup: int) -> float:
    s = stamps[warmup:]
    return (len(s) - 1) / (s[-1] - s[0])


def run_worker(kind: str, a: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--model", a.model, "--images", a.images,
           "--resolution", str(a.resolution), "--batch-size", str(a.batch_size), "--steps", str(a.steps),
           "--device", a.device, "--mixed-precision", a.mixed_precision, "--out", str(out),
           "--threads", str(a.threads), "--shape", a.shape]
    if a.max_memory:
        cmd += ["--max-memory", str(a.max_memory)]
    if a.diffusers_script:
        cmd += ["--diffusers-script", a.diffusers_script]
    launched = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{\"stamps\"")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{kind} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(lines[-1])
    res["first_step_s"] = res["first_step_at"] - launched
    res["parts"] = {part: (wall - launched, cpu) for part, (wall, cpu) in res["marks"].items()}
    return res


def _flops_per_sample(a: argparse.Namespace) -> float | None:
    """Model FLOPs of one training sample: --flops-per-sample, else counted by torch's FlopCounterMode on the meta
    device (no memory, no arithmetic): the UNet's forward pass and its backward pass to its inputs (the weights
    are frozen) at the resolution, with cached latents (no VAE), plus the text encoders' forward and backward."""
    if a.flops_per_sample:
        return a.flops_per_sample
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(a.model)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        encoders = [cls(CLIPTextConfig.from_pretrained(folder / sub)) for sub, cls in
                    (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection))
                    if (folder / sub).is_dir()]
    for module in (unet, *encoders):
        module.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with counter:
        for te in encoders:  # forward only here; their backward pass to the learned rows costs about as much again
            te(torch.zeros(1, 77, dtype=torch.long, device="meta"))
        text = counter.get_total_flops()
        hidden = torch.zeros(1, 77, unet.config.cross_attention_dim, device="meta", requires_grad=True)
        added = {}
        if unet.config.addition_embed_type == "text_time":
            pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
            added = {"added_cond_kwargs": {"text_embeds": torch.zeros(1, pooled, device="meta"),
                                           "time_ids": torch.zeros(1, 6, device="meta")}}
        side = a.resolution // 8
        out = unet(torch.zeros(1, 4, side, side, device="meta"), torch.zeros(1, device="meta", dtype=torch.long),
                   hidden, **added).sample
        out.sum().backward()
    return counter.get_total_flops() + text


def _peak_tflops(a: argparse.Namespace) -> float | None:
    """The accelerator's dense bf16 peak in TFLOP/s: --peak-tflops, else from the device's name."""
    if a.peak_tflops:
        return a.peak_tflops
    if not a.device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(a.device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


# dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets; the first name contained in the
# device name wins, so the longer names come first
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0,
                    "T4": 65.0, "V100": 125.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="diffusers folder (default: build a random one of --shape)")
    ap.add_argument("--shape", choices=random_models.SHAPES, default="small")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30, help="steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="steps not timed at the start of each run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the programs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mixed-precision", default="no", help="no | fp16 | bf16 (the same for both)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--programs", default=None,
                    help="comma-separated: textinv and diffusers (the example), each with optional settings (see "
                         "above), e.g. textinv,diffusers,textinv-gc; default: textinv, and diffusers when the "
                         "example is given")
    ap.add_argument("--max-memory", type=float, help="train.max_memory (GiB) of the textinv-budget programs")
    ap.add_argument("--diffusers-script", default=None,
                    help="path to diffusers' examples/textual_inversion/textual_inversion.py (textual_inversion_sdxl.py "
                         "for --shape sdxl) (default: $DIFFUSERS_TI_SCRIPT, $DIFFUSERS_TI_SDXL_SCRIPT)")
    ap.add_argument("--diffusers-repo", default=os.environ.get("DIFFUSERS_REPO"),
                    help="a git clone of huggingface/diffusers to take the example from, at --diffusers-commit "
                         "(default: $DIFFUSERS_REPO)")
    ap.add_argument("--diffusers-commit", default=DIFFUSERS_COMMIT)
    ap.add_argument("--parts", action=argparse.BooleanOptionalAction, default=None,
                    help="also time the parts of a step in this process (default: on for the small shape)")
    ap.add_argument("--peak-tflops", type=float, help="the device's bf16 peak, for the model-FLOPs utilisation "
                                                      "(default: from the CUDA device's name)")
    ap.add_argument("--flops-per-sample", type=float,
                    help="model FLOPs of one training sample (default: counted on the meta device)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--images", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not a.worker and a.steps < a.warmup + 2:
        ap.error(f"--steps must be at least --warmup + 2 (two timed steps make a rate); got {a.steps} and {a.warmup}")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.worker:
        fn = worker_textinv if program_settings(a.worker)[0] == "textinv" else worker_diffusers
        result = fn(a)
        print(json.dumps(result), flush=True)
        return

    family = "sdxl" if a.shape == "sdxl" else "sd"
    a.diffusers_script = a.diffusers_script or os.environ.get(
        "DIFFUSERS_TI_SDXL_SCRIPT" if family == "sdxl" else "DIFFUSERS_TI_SCRIPT")
    with tempfile.TemporaryDirectory(prefix="textinv-bench-example-") as tmp:
        if a.diffusers_repo and not a.diffusers_script:
            a.diffusers_script = str(extract_example(a.diffusers_repo, a.diffusers_commit, Path(tmp), family))
        compare(a)


def compare(a: argparse.Namespace) -> None:
    """Run the programs in alternating rounds, each run a fresh process; print each run and the medians."""
    given = bool(a.model)
    a.model = a.model or str(random_models.build_model(a.shape, a.resolution))
    a.images = str(make_images(random_models.CACHE / "images"))
    kinds = a.programs.split(",") if a.programs else ["textinv"] + (["diffusers"] if a.diffusers_script else [])
    for kind in kinds:
        program_settings(kind)
    if any(k.startswith("diffusers") for k in kinds) and not a.diffusers_script:
        raise SystemExit("the diffusers example needs --diffusers-script PATH or --diffusers-repo CLONE")
    if any("budget" in program_settings(k)[1] for k in kinds) and not a.max_memory:
        raise SystemExit("a -budget program needs --max-memory GIB")
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    weights = random_models.weights_mib(Path(a.model))
    print(f"model {a.model} ({'given' if given else a.shape}; weights {weights:.0f} MiB), resolution "
          f"{a.resolution}, batch {a.batch_size}, {a.steps} steps/run ({a.warmup} untimed), device {a.device}, "
          f"mixed precision {a.mixed_precision}, threads {a.threads or 'default'}"
          + (f", example {Path(a.diffusers_script).name} at {a.diffusers_commit[:7]}" if a.diffusers_script else "")
          + (f", train.max_memory {a.max_memory:g} GiB for -budget" if a.max_memory else ""), flush=True)
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {_load()}", flush=True)
    for r in range(a.rounds):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as out:
                res = run_worker(kind, a, Path(out))
            res["rate"] = _rate(res["stamps"], a.warmup)
            res["mean_loss"] = statistics.mean(res["losses"]) if res.get("losses") else float("nan")
            runs[kind].append(res)
            print(f"round {r + 1} {kind:12s} {res['rate']:.4f} steps/s  first step at {res['first_step_s']:.1f} s  "
                  f"peak {res['peak_mib']:.0f} MiB ({res['peak_mib'] - weights - res['base_mib']:.0f} above the "
                  f"weights and libraries)  mean loss {res['mean_loss']:.4f}  load average {_load()}", flush=True)
            print("        start-up, wall / CPU s from launch: " + ", ".join(
                f"{part} {wall:.1f} / {cpu:.1f}" for part, (wall, cpu) in res["parts"].items())
                + "".join(f"\n        {m}" for m in res.get("messages", [])), flush=True)
    print(f"\nfinished {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {_load()}")
    peak = _peak_tflops(a)
    flops = _flops_per_sample(a) if peak else None
    medians = {}
    for kind, rs in runs.items():
        rate = medians[kind] = statistics.median(r["rate"] for r in rs)
        peak_mib = max(r["peak_mib"] for r in rs)
        above = peak_mib - weights - statistics.median(r["base_mib"] for r in rs)
        first_cpu = statistics.median(r["parts"]["first step"][1] for r in rs)
        line = (f"{kind:12s} median {rate:.4f} steps/s ({1 / rate:.2f} s/step, {rate * a.batch_size:.4f} samples/s) "
                f"over {a.rounds} rounds; first step at {statistics.median(r['first_step_s'] for r in rs):.1f} s "
                f"({first_cpu:.1f} CPU s); peak memory {peak_mib:.0f} MiB, {above:.0f} MiB above the weights and "
                f"libraries; mean loss {statistics.mean(r['mean_loss'] for r in rs):.4f}")
        if flops and peak:
            line += f"; model-FLOPs utilisation {rate * a.batch_size * flops / (peak * 1e12):.1%} of {peak:.0f} TFLOP/s"
        print(line)
    for kind in kinds:
        if kind.startswith("textinv") and "diffusers" in medians:
            ours, theirs = runs[kind], runs["diffusers"]
            print(f"{kind} / diffusers example: {medians[kind] / medians['diffusers']:.2f}x steps/s, "
                  f"{max(r['peak_mib'] for r in ours) / max(r['peak_mib'] for r in theirs):.2f}x peak memory, "
                  f"{_median_first(ours, 0) / _median_first(theirs, 0):.2f}x time to the first step "
                  f"({_median_first(ours, 1) / _median_first(theirs, 1):.2f}x in CPU seconds)")
    if a.parts if a.parts is not None else a.shape == "small":
        print("\nseconds per step, by part (medians of 5 timed steps, in this process):")
        for k, v in parts(a).items():
            print(f"  {k:36s} {v:.4f}")


if __name__ == "__main__":
    main()
