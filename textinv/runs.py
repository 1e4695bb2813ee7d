"""The run folder, `logs/<name>_<timestamp>/`, and atomic writes into it.

    config.yaml          the resolved config (what --resume reads back)
    embeddings/          <name>-<step>.pt every save_every steps, <name>.pt (+ other formats) at the end
    images/              conditioning / reconstruction / samples / samples_scaled / init_word, every image_every
    state/               state-<step>.pt: learned rows, optimizer, scheduler, RNG, data order (for --resume)
    state.json           points at the latest state file, written after it (a SIGKILL leaves the previous one)
    loss.csv, loss.png   one row per step; the plot is redrawn with each image log and at the end
    tensorboard/         events, with --report-to tensorboard
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from textinv.atomic import torch_save, write_text
from textinv.errors import ConfigError

STATE_POINTER = "state.json"
KEEP_STATES = 2  # the latest and the one before it


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """Create `<output_dir>/<name>_<timestamp>/` (a suffix if two runs start in the same second)."""
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
    root = Path(output_dir)
    for i in range(1000):
        run = root / (f"{name}_{stamp}" + (f"-{i}" if i else ""))
        try:
            run.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            continue
        for sub in ("embeddings", "images", "state"):
            (run / sub).mkdir()
        return run
    raise ConfigError(f"cannot create a run folder under {root}")


def save_state(run_dir: Path, step: int, state: dict[str, Any]) -> Path:
    """Write state-<step>.pt atomically, then point state.json at it, then drop older states."""
    path = run_dir / "state" / f"state-{step:06d}.pt"
    torch_save(state, path)
    write_text(run_dir / STATE_POINTER, json.dumps({"step": step, "state": f"state/{path.name}"}) + "\n")
    states = sorted((run_dir / "state").glob("state-*.pt"))
    for old in states[:-KEEP_STATES]:
        old.unlink(missing_ok=True)
    return path


def latest_state(run_dir: Path) -> tuple[int, Path]:
    """(step, path) of the state that state.json points at; a clear error when the run has none."""
    pointer = run_dir / STATE_POINTER
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a textinv run folder (no config.yaml); pass logs/<name>_<timestamp>")
    if not pointer.is_file():
        raise ConfigError(f"{run_dir} has no checkpoint to resume from (no {STATE_POINTER}); start a new run")
    try:
        info = json.loads(pointer.read_text())
        return int(info["step"]), run_dir / info["state"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{pointer} is damaged; delete it to start over, or restore it") from None


def load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} is missing; the run folder was changed after it was written")
    return torch.load(path, map_location="cpu", weights_only=True)


def truncate_csv(path: Path, step: int) -> None:
    """Drop loss.csv rows after `step` (they came from steps a resumed run will redo)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    keep = lines[:1] + [ln for ln in lines[1:] if ln and int(ln.split(",", 1)[0]) <= step]
    write_text(path, "\n".join(keep) + "\n")
