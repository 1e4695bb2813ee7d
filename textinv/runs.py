"""The run folder, `logs/<name>_<timestamp>/`, and atomic writes into it.

    config.yaml          the resolved config (what --resume reads back)
    embeddings/          <name>-<step>.pt every save_every steps, <name>.pt (+ other formats) at the end
    images/              conditioning (+ .txt: the drawn prompts) / inputs / reconstruction / samples /
                         samples_scaled / init_word, every image_every, one row per placeholder
    state/               state-<step>.pt: learned rows, optimizer, scheduler, RNG, data order (for --resume)
    state.json           points at the latest state file, written after it (a SIGKILL leaves the previous one)
    loss.csv, loss.png   one row per step; the plot is redrawn with each image log and at the end
    tensorboard/         events, with --report-to tensorboard (or all)

`RunWriter` writes all of it, from the main process only; `load_latest_state` reads the state back for --resume,
falling back to the previous state when the latest is damaged.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from textinv.atomic import atomic_path, torch_save, write_text
from textinv.errors import ConfigError

STATE_POINTER = "state.json"
VALIDATION_CSV = "validation.csv"
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


STATE_KEYS = ("step", "learned", "optimizer", "scheduler", "rng", "sampler")


def load_latest_state(run_dir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """The newest intact state of the run: the one state.json points at, or, when that one is damaged (truncated,
    empty, missing keys) or state.json itself is, the newest earlier one, said in one line through `say`. A state
    file that holds code rather than tensors is refused, not skipped."""
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a textinv run folder (no config.yaml); pass logs/<name>_<timestamp>")
    pointed = _pointed_state(run_dir)
    candidates = sorted((run_dir / "state").glob("state-*.pt"), reverse=True)
    if pointed is not None:
        candidates = [pointed] + [c for c in candidates if c.name < pointed.name]
    if not candidates:
        raise ConfigError(f"{run_dir} has no checkpoint to resume from (no state/state-*.pt); start a new run")
    damaged = []
    for path in candidates:
        problem = _state_problem(path)
        if isinstance(problem, dict):
            if damaged:
                say(f"warning: {', '.join(damaged)} damaged; resuming from {path.name} (step {problem['step']})")
            return problem
        damaged.append(f"{path.name} is {problem}")
    raise ConfigError(f"no intact state in {run_dir / 'state'} ({'; '.join(damaged)}); start a new run")


def _pointed_state(run_dir: Path) -> Path | None:
    """The state file state.json names, or None when state.json is missing or damaged."""
    try:
        info = json.loads((run_dir / STATE_POINTER).read_text())
        return run_dir / "state" / Path(info["state"]).name
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _state_problem(path: Path) -> dict[str, Any] | str:
    """The state in `path`, or what is wrong with it (a few words)."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise ConfigError(f"{path} holds Python code, not only tensors (it was not written by textinv); "
                              "refusing to load it: delete it to resume from the state before") from None
        return "not readable"
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile):
        return "truncated or not a state file"
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        return "missing entries"
    return state


def truncate_csv(path: Path, step: int) -> None:
    """Keep loss.csv rows up to `step` (later ones came from steps a resumed run will redo); rows that do not parse
    (a line cut short by a kill, an edit) are dropped rather than fatal."""
    if not path.is_file():
        return
    lines = path.read_text(errors="replace").splitlines()
    keep = ["step,loss,lr"]
    for line in lines[1:]:
        parts = line.split(",")
        try:
            row_step, _, _ = int(parts[0]), float(parts[1]), float(parts[2])
        except (ValueError, IndexError):
            continue
        if len(parts) == 3 and row_step <= step:
            keep.append(line)
    write_text(path, "\n".join(keep) + "\n")


def embedding_of(rows: torch.Tensor | list[torch.Tensor], p, name: str, step: int, base_model: dict):
    """The learned rows [n_placeholders * n_vectors, dim] as an Embedding, one token per placeholder of the `p`
    (personalization) config section. SDXL: a list of two such tensors, clip_l's and clip_g's. `base_model` is
    what `models.base_model_of` says of the model."""
    from textinv.formats.embedding import Embedding, Token

    n = p.num_vectors_per_token
    parts = list(rows) if isinstance(rows, (list, tuple)) else [rows]
    tokens = [Token(name=placeholder, vectors=parts[0][i * n:(i + 1) * n].clone(),
                    vectors_2=parts[1][i * n:(i + 1) * n].clone() if len(parts) > 1 else None)
              for i, placeholder in enumerate(p.placeholder_strings)]
    return Embedding(tokens=tokens, name=name, step=step, base_model=base_model["base_model"],
                     base_model_hash=base_model["base_model_hash"],
                     init_words=dict(zip(p.placeholder_strings, p.initializer_words, strict=True)),
                     extra={"trained_with": "textinv", "learnable_property": p.learnable_property,
                            **base_model["extra"]})


def final_paths(embedding, run_dir: Path, name: str, formats: list[str]) -> dict[Path, str]:
    """Where each final file goes -> the format or tool (`log.formats`) it is written for; two naming the same
    file write it once. The .pt comes first."""
    from textinv.formats.files import with_extension

    paths: dict[Path, str] = {}
    for fmt in formats:
        paths.setdefault(with_extension(embedding, run_dir / "embeddings" / name, format=fmt), fmt)
    return paths


class RunWriter:
    """Everything a run writes into its folder; every method is a no-op off the main process."""

    def __init__(self, run_dir: Path, name: str, main: bool):
        self.run_dir, self.name, self.main = run_dir, name, main
        self.csv = None
        if main:
            path = run_dir / "loss.csv"
            new = not path.is_file()
            self.csv = open(path, "a")  # noqa: SIM115 - closed in close()
            if new:
                self.csv.write("step,loss,lr\n")

    def log(self, step: int, loss: float, lr: float) -> None:
        if self.csv is not None:
            self.csv.write(f"{step},{loss:.6g},{lr:.6g}\n")
            self.csv.flush()

    def checkpoint(self, step: int, embedding, state: dict[str, Any]) -> None:
        """embeddings/<name>-<step>.pt, then the state (the state last: resume trusts what it points at)."""
        if not self.main:
            return
        from textinv.formats.files import save_embedding

        save_embedding(embedding, self.run_dir / "embeddings" / f"{self.name}-{step}.pt", format="pt", force=True)
        save_state(self.run_dir, step, state)

    def finals(self, embedding, formats: list[str]) -> list[Path]:
        """The final embedding in every format."""
        if not self.main:
            return []
        from textinv.formats.files import save_embedding

        return [save_embedding(embedding, path, format=fmt, force=True)
                for path, fmt in final_paths(embedding, self.run_dir, self.name, formats).items()]

    def plot(self) -> None:
        if self.main:
            plot_losses(self.run_dir / "loss.csv", self.run_dir / "loss.png")

    def close(self) -> None:
        if self.csv is not None:
            self.csv.close()
            self.csv = None


def plot_losses(csv_path: Path, png_path: Path) -> bool:
    """Loss per step and its running mean; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps, losses = [], []
    for line in csv_path.read_text().splitlines()[1:]:
        parts = line.split(",")
        with contextlib.suppress(ValueError, IndexError):
            steps.append(int(parts[0]))
            losses.append(float(parts[1]))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, lw=0.6, alpha=0.5, label="loss")
    if len(losses) >= 2:
        k = max(1, len(losses) // 20)
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def run_name(cfg) -> str:
    """The run's name: `log.name`, else the first image folder's name."""
    if cfg.log.name:
        return cfg.log.name
    first = Path(cfg.data.paths[0]).resolve().name if cfg.data.paths else "run"
    return re.sub(r"[^\w.-]+", "_", first) or "run"


def read_validation_csv(run_dir: Path) -> list[tuple[int, float]]:
    path = Path(run_dir) / VALIDATION_CSV
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines()[1:]:
        step, value = line.split(",")[:2]
        rows.append((int(step), float(value)))
    return rows
