"""The run's resumable states: state/state-<step>.pt and state.json, the pointer at the latest one.

The pointer is written after the state it names, so a SIGKILL between the two leaves the previous pair; reading
falls back to the newest earlier state when the latest is damaged.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textinv.atomic import torch_save, write_text
from textinv.errors import ConfigError, TextinvError
from textinv.formats.container import check_zip

POINTER = "state.json"
FOLDER = "state"
KEEP = 2  # the latest and the one before it
KEYS = ("step", "learned", "optimizer", "scheduler", "rng", "sampler")
# A state holds the learned rows, their AdamW moments, the generators and the data order: megabytes at most
MAX_STATE_BYTES = 1 << 30


def state_files(run_dir: Path) -> list[Path]:
    """The state files of the run, oldest first."""
    return sorted((run_dir / FOLDER).glob("state-*.pt"))


def save_state(run_dir: Path, step: int, state: dict[str, Any]) -> Path:
    """Write state-<step>.pt atomically, then point state.json at it, then drop older states."""
    path = run_dir / FOLDER / f"state-{step:06d}.pt"
    torch_save(state, path)
    write_text(run_dir / POINTER, json.dumps({"step": step, "state": f"{FOLDER}/{path.name}"}) + "\n")
    for old in state_files(run_dir)[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def latest_state(run_dir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """The newest intact state of the run: the one state.json points at, or, when that one is damaged (truncated,
    empty, missing keys, not a state file at all) or state.json itself is (or points outside the run's state/),
    the newest earlier one, said in one line through `say`. A state file that asks to run code is refused, not
    skipped."""
    pointed, pointer_problem = _pointed_state(run_dir)
    candidates = state_files(run_dir)[::-1]
    if pointed is not None:
        candidates = [pointed] + [c for c in candidates if c.name < pointed.name]
    if not candidates:
        raise ConfigError(f"{run_dir} has no checkpoint to resume from (no {FOLDER}/state-*.pt); start a new run")
    damaged = []
    for path in candidates:
        problem = _state_problem(path)
        if isinstance(problem, dict):
            if damaged or pointer_problem:
                why = " and ".join([*damaged, *([pointer_problem] if pointer_problem else [])])
                say(f"warning: {why}; resuming from {path.name} (step {problem['step']})")
            return problem
        damaged.append(f"{path.name} is {problem}")
    raise ConfigError(f"no intact state in {run_dir / FOLDER} ({'; '.join(damaged)}); start a new run")


_STATE_NAME = re.compile(r"^state-\d+\.pt$")


def _pointed_state(run_dir: Path) -> tuple[Path | None, str | None]:
    """The state file state.json names, or None and why not (None, None when there is no state.json): a damaged
    pointer, or one that names anything but a state in the run's own state/ folder, is not followed."""
    try:
        named = json.loads((run_dir / POINTER).read_text())["state"]
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{POINTER} is damaged"
    if not isinstance(named, str) or Path(named).parent != Path(FOLDER) or not _STATE_NAME.match(Path(named).name):
        return None, f"{POINTER} names {str(named)[:80]!r}, not a state in {FOLDER}/"
    return run_dir / FOLDER / Path(named).name, None


def _state_problem(path: Path) -> dict[str, Any] | str:
    """The state in `path`, or what is wrong with it (a few words: `path` is ...)."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    if path.stat().st_size > MAX_STATE_BYTES:
        return "not a state file (far too large)"
    if not zipfile.is_zipfile(path):  # textinv writes zips; torch's older layouts allocate what a file declares
        _refuse_code(path)
        return "truncated or not a state file"
    try:
        check_zip(path, limit=MAX_STATE_BYTES)
    except TextinvError:
        return "not a state file (its records declare more than a state holds)"
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        _refuse_code(path)
        return "truncated or not a state file"
    except (Exception, MemoryError):  # torch's readers raise many kinds on arbitrary bytes
        return "truncated or not a state file"
    if not isinstance(state, dict) or any(k not in state for k in KEYS):
        return "not a state file (entries are missing)"
    learned = state["learned"]
    if not (isinstance(learned, torch.Tensor) and learned.dim() == 2 and isinstance(state["step"], int)):
        return "not a state file (its learned vectors or step are not what textinv writes)"
    return state


def _refuse_code(path: Path) -> None:
    """ConfigError when the pickle in `path` names a function or class to run, as the restricted unpickler (the
    one every embedding is read with) finds it: refused, not skipped. Bytes that are merely damaged are not code."""
    from textinv.errors import UnsafeFileError
    from textinv.safe_pickle import load_torch_file

    try:
        load_torch_file(path)
    except UnsafeFileError:
        raise ConfigError(f"{path} holds Python code, not only tensors (it was not written by textinv); "
                          "refusing to load it: delete it to resume from the state before") from None
    except (Exception, MemoryError):
        pass
