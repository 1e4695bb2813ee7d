"""Generation speed: `textinv generate` against a bare diffusers `StableDiffusionPipeline` making the same images.

    python bench/generate_speed.py                       # the toy model, -n 1 and -n 8, 50 steps, 5 rounds
    python bench/generate_speed.py --counts 1 8 --steps 50 --rounds 5 --threads 1

Each run is a fresh process timed from start to exit, as a user waits for it: imports, model loading, sampling
and writing the PNGs. The bare pipeline is what a diffusers user writes: `from_pretrained`, one call with one
generator per image (`generator=[...]`, seeds S..S+n-1, as textinv uses them), `image.save`. The two programs
alternate within each round (this machine's speed drifts from minute to minute) and the medians of wall time
and of CPU time are compared. On a shared machine pass `--threads 1`: two threads fighting for busy cores can run
several times slower, and unevenly.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a photo of a blue cross"

BARE = """
import sys, torch
from diffusers import StableDiffusionPipeline
model, out, n, steps, seed, prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]
with torch.inference_mode():
    images = pipe(prompt, num_images_per_prompt=n, num_inference_steps=steps, generator=generators).images
for i, image in enumerate(images):
    image.save(f"{out}/{i}.png")
"""


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run. CPU time (user + system) is the steadier figure on a shared machine:
    it leaves out the time spent waiting for a core, though contention still inflates it a little."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def commands(program: str, model: str, out: str, n: int, steps: int, seed: int) -> list[str]:
    if program == "textinv":
        return [sys.executable, "-m", "textinv", "--quiet", "generate", PROMPT, "--model", model, "-n", str(n),
                "-s", str(steps), "--seed", str(seed), "--no-grid", "--out", out]
    return [sys.executable, "-c", BARE, model, out, str(n), str(steps), str(seed), PROMPT]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy", help="toy, or a local diffusers folder")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 8], help="images per run (-n)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in both (OMP_NUM_THREADS)")
    a = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from textinv.models.source import toy_model_dir

    model = str(toy_model_dir()) if a.model == "toy" else a.model
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1"}
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    import diffusers
    import torch

    print(f"model {a.model}, {a.steps} steps, {a.rounds} alternating rounds, torch {torch.__version__} "
          f"({a.threads or torch.get_num_threads()} threads), diffusers {diffusers.__version__}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    times: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for n in a.counts:
                order = ("textinv", "diffusers") if r % 2 == 0 else ("diffusers", "textinv")
                for program in order:
                    out = Path(tmp) / f"{program}-{n}-{r}"
                    out.mkdir()
                    took = timed(commands(program, model, str(out), n, a.steps, seed=r), env)
                    times.setdefault((program, n), []).append(took)
                    print(f"round {r + 1} -n {n} {program}: {took[0]:.2f} s wall, {took[1]:.2f} s CPU", flush=True)
    print(f"{'-n':>4} {'':>5} {'textinv s':>10} {'diffusers s':>12} {'ratio':>7}")
    for n in a.counts:
        for k, what in enumerate(("wall", "CPU")):
            ours = statistics.median(t[k] for t in times[("textinv", n)])
            theirs = statistics.median(t[k] for t in times[("diffusers", n)])
            print(f"{n:>4} {what:>5} {ours:>10.2f} {theirs:>12.2f} {ours / theirs:>6.2f}x")
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
