"""`Run`: the run folder's one reader and writer. Every file name below is spelled here and nowhere else.

    config.yaml          the resolved config (what --resume reads back)
    embeddings/          <name>-<step>.pt every save_every steps, <name>.pt (+ other formats) at the end; with
                         optim.ema_decay, their EMA beside them: <name>-<step>-ema.pt, <name>-ema.pt (+ formats)
    images/              <key>_gs-<step>.png every image_every: conditioning (+ .txt: the drawn prompts) / inputs /
                         reconstruction / samples / samples_scaled / init_word, one row per placeholder; validation
    state/, state.json   the resumable states and the pointer at the latest (`textinv.runs.states`)
    loss.csv, loss.png   one row per step; the plot is redrawn with each image log and at the end
    validation.csv       the validation loss, every log.val_loss_every steps
    eval.json, eval/     `textinv eval` (or log.eval_every): the scores, and one contact sheet per candidate
    report.html          `textinv report`
    tensorboard/         events, with --report-to tensorboard (or all)

Only the main process writes: on the others (`main=False`) every write is a no-op.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textinv.atomic import write_text
from textinv.config import Config, apply_overrides, dump_config, load_config, validate
from textinv.errors import ConfigError
from textinv.runs import states
from textinv.runs.curves import Curve, plot_losses

CONFIG_FILE = "config.yaml"
EVAL_FILE = "eval.json"
_CHECKPOINT = re.compile(r"^(?P<name>.+)-(?P<step>\d+)\.pt$")  # embeddings/<name>-<step>.pt
_EMA = "-ema"  # embeddings/<name>-<step>-ema.pt, <name>-ema.pt: the EMA of the vectors (optim.ema_decay)
_IMAGE_LOG = re.compile(r"^(?P<key>[a-z_]+)_gs-(?P<step>\d+)\.png$")  # images/<key>_gs-<step>.png


def run_name(cfg: Config) -> str:
    """The run's name: `log.name`, else the first image folder's name."""
    if cfg.log.name:
        return cfg.log.name
    first = Path(cfg.data.paths[0]).resolve().name if cfg.data.paths else "run"
    return re.sub(r"[^\w.-]+", "_", first) or "run"


class Run:
    """A run folder. `Run.create` makes a new one, `Run.open` an existing one (one clear error when it is not)."""

    def __init__(self, path: str | Path, *, name: str | None = None, main: bool = True):
        self.path, self.main, self._name = Path(path), main, name
        self.embeddings, self.images = self.path / "embeddings", self.path / "images"
        self.eval_grids, self.tensorboard = self.path / "eval", self.path / "tensorboard"
        self.report_file = self.path / "report.html"
        self._loss = Curve(self.path / "loss.csv", ("step", "loss", "lr"))
        self._validation = Curve(self.path / "validation.csv", ("step", "val_loss"))

    @classmethod
    def create(cls, cfg: Config, *, comment: str = "") -> Run:
        """`<log.output_dir>/<name>_<timestamp>/` (a suffix if two runs start in the same second) with its config,
        `comment` as the config file's first line."""
        stamp, root, name = time.strftime("%Y-%m-%dT%H-%M-%S"), Path(cfg.log.output_dir), run_name(cfg)
        for i in range(1000):
            path = root / (f"{name}_{stamp}" + (f"-{i}" if i else ""))
            try:
                path.mkdir(parents=True, exist_ok=False)
            except FileExistsError:
                continue
            run = cls(path, name=name)
            for sub in (run.embeddings, run.images, path / states.FOLDER):
                sub.mkdir()
            write_text(path / CONFIG_FILE, (f"# {comment}\n" if comment else "") + dump_config(cfg))
            return run
        raise ConfigError(f"cannot create a run folder under {root}")

    @classmethod
    def open(cls, path: str | Path, *, name: str | None = None, main: bool = True) -> Run:
        """The run in `path`; `name` defaults to the saved config's."""
        if not cls.is_run(path):
            raise ConfigError(f"{path} is not a textinv run folder (no {CONFIG_FILE}); pass logs/<name>_<timestamp>")
        return cls(path, name=name, main=main)

    @staticmethod
    def is_run(path: str | Path) -> bool:
        return (Path(path) / CONFIG_FILE).is_file()

    @property
    def name(self) -> str:
        if self._name is None:
            self._name = run_name(self.config(check=False))
        return self._name

    # --- the config ------------------------------------------------------------------------------------------

    def config(self, *, max_steps: int | None = None, check: bool = True) -> Config:
        """The saved config (checked as a new run's is, unless `check` is False), with `max_steps` when given."""
        cfg = load_config(self.path / CONFIG_FILE)
        return validate(apply_overrides(cfg, None, **{"train.max_steps": max_steps})) if check else cfg

    def config_text(self) -> str:
        return (self.path / CONFIG_FILE).read_text()

    def update_config(self, cfg: Config) -> None:
        """Rewrite config.yaml when `cfg` differs from it (a `--resume --max-steps N` trains to a new step), keeping
        its first comment line (the effective batch)."""
        if not self.main or dump_config(cfg) == dump_config(self.config(check=False)):
            return
        first = self.config_text().split("\n", 1)[0]
        write_text(self.path / CONFIG_FILE, (first + "\n" if first.startswith("#") else "") + dump_config(cfg))

    def check_image_folders(self, cfg: Config) -> None:
        """Before resuming: every image folder the run was started with is still where its config says."""
        for folder in cfg.data.paths:
            if not Path(folder).is_dir():
                hint = ("; it was saved as a relative path (by an older textinv): resume from the folder the run "
                        "started in" if not Path(folder).is_absolute() else "; was it moved? Put it back")
                raise ConfigError(f"the run's image folder {folder} does not exist{hint}, or edit data.paths in "
                                  f"{self.path / CONFIG_FILE}")

    # --- loss.csv and validation.csv ---------------------------------------------------------------------------

    def log_loss(self, step: int, loss: float, lr: float) -> None:
        if self.main:
            self._loss.append(step, loss, lr)

    def log_validation(self, step: int, loss: float) -> None:
        if self.main:
            self._validation.append(step, loss)

    def losses(self) -> list[tuple[int, float, float]]:
        """(step, loss, lr) of every step logged."""
        return self._loss.rows()

    def validation_losses(self) -> list[tuple[int, float]]:
        return self._validation.rows()

    def truncate_logs(self, step: int) -> None:
        """Resuming from `step`: drop the rows of later steps, which the resumed run redoes."""
        if self.main:
            self._loss.truncate(step)
            self._validation.truncate(step)

    def plot_losses(self) -> None:
        """loss.png from loss.csv and validation.csv as they are now."""
        if self.main:
            plot_losses(self._loss.rows(), self.path / "loss.png", self._validation.rows())

    def close(self) -> None:
        self._loss.close()
        self._validation.close()

    # --- checkpoints and states ----------------------------------------------------------------------------------

    def checkpoint_path(self, step: int, *, ema: bool = False) -> Path:
        return self.embeddings / (f"{self.name}-{step}{_EMA}.pt" if ema else f"{self.name}-{step}.pt")

    def save_checkpoint_embedding(self, step: int, embedding, *, ema: bool = False) -> Path:
        """embeddings/<name>-<step>.pt, or its EMA's <name>-<step>-ema.pt (written on every process that asks:
        validation scores it)."""
        from textinv.formats.files import save_embedding

        return save_embedding(embedding, self.checkpoint_path(step, ema=ema), format="pt", force=True)

    def save_checkpoint(self, step: int, embedding, state: dict[str, Any]) -> None:
        """embeddings/<name>-<step>.pt, then the state (the state last: resume trusts what it points at)."""
        if self.main:
            self.save_checkpoint_embedding(step, embedding)
            states.save_state(self.path, step, state)

    def embedding_files(self, *, ema: bool = False) -> list[tuple[int | None, Path]]:
        """Every .pt in embeddings/ (or, with `ema`, every EMA .pt), by name, with the step its name gives (None
        for a final file)."""
        found = []
        for f in sorted(self.embeddings.glob("*.pt")):
            if f.stem.endswith(_EMA) != ema:
                continue
            m = _CHECKPOINT.match(f.name.replace(f"{_EMA}.pt", ".pt") if ema else f.name)
            found.append((int(m["step"]) if m else None, f))
        return found

    def final_files(self) -> list[Path]:
        """The final embedding files in embeddings/ (every format; not the checkpoints), the .pt first."""
        if not self.embeddings.is_dir():
            return []
        found = [f for f in self.embeddings.iterdir() if f.stem == self.name and f.is_file()]
        return sorted(found, key=lambda f: (f.suffix != ".pt", f.name))

    def state_files(self) -> list[Path]:
        return states.state_files(self.path)

    def latest_state(self, say: Callable[[str], None]) -> dict[str, Any]:
        """The newest intact state, falling back past damaged ones (said through `say`)."""
        return states.latest_state(self.path, say)

    def check_resumable(self, cfg: Config) -> None:
        """Before the model loads: the run has an intact state, holding as many learned vectors as `cfg` (its saved
        config) makes: one line, not a traceback, when config.yaml was edited after the run started."""
        state = self.latest_state(lambda _: None)  # the warnings are said when it is loaded
        p = cfg.personalization
        held, wanted = state["learned"].shape[0], len(p.placeholder_strings) * p.num_vectors_per_token
        if held != wanted:
            raise ConfigError(
                f"{self.path}: its states hold {held} learned vector(s), but {CONFIG_FILE} asks for "
                f"{len(p.placeholder_strings)} placeholder(s) x {p.num_vectors_per_token} vector(s) = {wanted}; "
                f"{CONFIG_FILE} was edited after the run started: put personalization back as it was, or start a "
                "new run"
            )

    # --- the final files ---------------------------------------------------------------------------------------

    def final_paths(self, embedding, formats: list[str], *, ema: bool = False) -> dict[Path, str]:
        """Where each final file (`ema`: each final EMA file) goes -> the format or tool (`log.formats`) it is
        written for; two naming the same file write it once. The first format's comes first."""
        from textinv.formats.files import with_extension

        stem = self.embeddings / (f"{self.name}{_EMA}" if ema else self.name)
        paths: dict[Path, str] = {}
        for fmt in formats:
            paths.setdefault(with_extension(embedding, stem, format=fmt), fmt)
        return paths

    def write_finals(self, embedding, formats: list[str], *, ema: bool = False) -> list[Path]:
        """The final embedding (`ema`: its EMA) in every format."""
        if not self.main:
            return []
        from textinv.formats.files import save_embedding

        return [save_embedding(embedding, path, format=fmt, force=True)
                for path, fmt in self.final_paths(embedding, formats, ema=ema).items()]

    # --- image logs --------------------------------------------------------------------------------------------

    def image_log(self, key: str, step: int, suffix: str = ".png") -> Path:
        return self.images / f"{key}_gs-{step:06d}{suffix}"

    def image_logs(self) -> dict[int, dict[str, Path]]:
        """step -> key -> the picture logged."""
        found: dict[int, dict[str, Path]] = {}
        for f in sorted(self.images.glob("*.png")):
            m = _IMAGE_LOG.match(f.name)
            if m:
                found.setdefault(int(m["step"]), {})[m["key"]] = f
        return found

    # --- eval.json ---------------------------------------------------------------------------------------------

    def write_eval(self, results: dict) -> None:
        if self.main:
            write_text(self.path / EVAL_FILE, json.dumps(results, indent=2) + "\n")

    def read_eval(self) -> dict | None:
        """The saved scores, or None before the first `textinv eval`."""
        path = self.path / EVAL_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            raise ConfigError(f"{path} is damaged; run `textinv eval {self.path}` again") from None


def resume_config(run_dir: str | Path, *, max_steps: int | None = None,
                  others: dict[str, object] | None = None) -> Config:
    """The config `textinv train --resume` continues `run_dir` with: the saved one, with `max_steps` when given.
    `others` maps the caller's other options to their values; a resume keeps the saved config, so any given one
    (a true value) is an error. The run's image folders must still be where they were, and its latest intact state
    must fit the config."""
    extra = [flag for flag, value in (others or {}).items() if value]
    if extra:
        raise ConfigError(f"--resume continues with the run's saved config; drop {', '.join(extra)} "
                          "(only --max-steps may change)")
    run = Run.open(run_dir)
    cfg = run.config(max_steps=max_steps)
    run.check_image_folders(cfg)
    run.check_resumable(cfg)
    return cfg
