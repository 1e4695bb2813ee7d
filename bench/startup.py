"""Start-up cost of the file commands (`inspect`, `convert`, `merge`, `fetch --search`) against importing torch.

Each command runs in a fresh process, in alternating rounds (torch, inspect, convert, merge, fetch, --help, torch,
...), so that a busy machine slows every side alike; the figures are medians of the CPU time (user + system, the
steadier figure on a shared machine) and of the wall time. `fetch --search` runs with HF_HUB_OFFLINE=1, so it
stops with its one-line error where it would first ask the hub: what is timed is its start-up.

    python bench/startup.py --rounds 7
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _programs(folder: Path) -> dict[str, list[str]]:
    from textinv.formats.embedding import Embedding, Token
    from textinv.formats.files import save_embedding

    a = save_embedding(Embedding([Token("<a>", torch.randn(2, 768))], name="a", step=500), folder / "a.pt")
    b = save_embedding(Embedding([Token("<b>", torch.randn(1, 768))], name="b"), folder / "b.safetensors")
    cli = [sys.executable, "-m", "textinv"]
    return {
        "import torch, safetensors.torch": [sys.executable, "-c", "import torch, safetensors.torch"],
        "textinv inspect": [*cli, "inspect", str(a), str(b)],
        "textinv convert": [*cli, "convert", str(a), str(folder / "out.safetensors"), "--force"],
        "textinv merge": [*cli, "merge", str(a), str(b), "-o", str(folder / "ab.pt"), "--force"],
        "textinv fetch --search (offline)": [*cli, "fetch", "--search", "cat"],
        "textinv --help": [*cli, "--help"],
    }


def _run(cmd: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        programs = _programs(Path(tmp))
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in programs}
        loads = [os.getloadavg()[0]]
        for _ in range(args.rounds):
            for name, cmd in programs.items():
                times[name].append(_run(cmd))
            loads.append(os.getloadavg()[0])
    base_cpu = statistics.median(c for c, _ in times["import torch, safetensors.torch"])
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, {args.rounds} rounds, load average "
          f"{min(loads):.1f}-{max(loads):.1f}; torch {torch.__version__}, Python {sys.version.split()[0]}")
    print(f"{'program':36} {'CPU s (median)':>15} {'wall s (median)':>16} {'CPU / torch':>12}")
    for name, runs in times.items():
        cpu, wall = statistics.median(c for c, _ in runs), statistics.median(w for _, w in runs)
        print(f"{name:36} {cpu:15.2f} {wall:16.2f} {cpu / base_cpu:11.2f}x")


if __name__ == "__main__":
    main()
