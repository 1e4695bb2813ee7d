"""Progress reporting for the CLI: a rich bar on a terminal, plain lines when output goes to a file or a pipe.

The library reports through `textinv.reporting.Reporter`; this module turns those calls into output. It is,
with cli.py, the only place that knows rich.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from textinv.reporting import Reporter


def is_interactive() -> bool:
    """Live bars only when both stdout and stderr are terminals (not CI, not `| tee`, not --json into a file)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


class ImageProgress(Reporter):
    """Generation's tasks `images` and `steps`: a bar of steps and one of images on a terminal, one line per
    finished image (or batch) otherwise. `enabled=False` (--quiet) shows nothing but warnings."""

    def __init__(self, console: Console, *, enabled: bool = True, live: bool | None = None) -> None:
        self.console = console
        self.enabled = enabled
        self.live = is_interactive() if live is None else live
        self._bar: Progress | None = None
        self._tasks: dict[str, object] = {}
        self._images = self._done = self._steps = 0
        self._in_batch = False
        self._started = time.perf_counter()

    def __enter__(self) -> ImageProgress:
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    def start(self, task: str, total: int, *, done: int = 0, note: str = "") -> None:
        if not self.enabled:
            return
        if task == "images":
            self._images, self._done = total, done
            if self.live and self._bar is None:
                self._bar = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=self.console,
                    transient=True,
                )
                self._bar.start()
                self._tasks = {name: self._bar.add_task(name, total=None) for name in ("images", "steps")}
        elif task == "steps":
            if not self._in_batch:  # a restart within a batch only corrects its total
                self._started = time.perf_counter()
            self._steps, self._in_batch = total, True
        if self._bar is not None and task in self._tasks:
            self._bar.reset(self._tasks[task], total=total, completed=done)

    def advance(self, task: str, done: int, **values: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None and task in self._tasks:
            self._bar.update(self._tasks[task], completed=done)
        elif task == "images" and self._bar is None:
            took = time.perf_counter() - self._started
            which = f"image {done}" if done == self._done + 1 else f"images {self._done + 1}-{done}"
            self.console.print(f"{which}/{self._images}: {self._steps} steps in {took:.1f} s", highlight=False)
        if task == "images":
            self._done = done

    def finish(self, task: str) -> None:
        if task == "steps":
            self._in_batch = False
        if task == "images":
            self._stop()

    def message(self, text: str) -> None:
        warning = text.startswith("warning")
        if self.enabled or warning:
            self.console.print(text, style="yellow" if warning else None, highlight=False, markup=False)

    def _stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._tasks = {}


# --- training: step/max_steps, loss, it/s, ETA ----------------------------------------------------------------

SMOOTHING = 0.9  # loss shown is an exponential moving average; raw values are in loss.csv


class TrainProgress(Reporter):
    """step/max_steps, smoothed loss, it/s, ETA and what the run is doing between steps (an image log, the
    validation, a checkpoint): a live bar on a terminal, lines otherwise; `quiet` shows nothing but warnings."""

    def __init__(self, console: Console, *, quiet: bool = False, plain: bool | None = None, every_s: float = 10.0):
        self.console, self.quiet = console, quiet
        self.plain = (not console.is_terminal) if plain is None else plain
        self.every_s = every_s
        self.smooth: float | None = None
        self.bar: Progress | None = None
        self.task = None
        self.t0 = self.last_print = 0.0
        self.first_step = self.step = 0
        self.max_steps = 0

    def start(self, task: str, total: int, *, done: int = 0, note: str = "") -> None:
        if task != "train":
            return
        self.first_step, self.max_steps = done, total
        self.t0 = self.last_print = time.perf_counter()
        if not self.quiet and note:
            self.console.print(note, highlight=False, markup=False)
        if self.quiet or self.plain:
            return
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} it/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=total, completed=done, loss="-", rate="-", status="")

    def advance(self, task: str, done: int, **values: float) -> None:
        if task != "train":
            return
        step, loss, lr = done, values["loss"], values.get("lr", 0.0)
        self.step = step
        self.smooth = loss if self.smooth is None else SMOOTHING * self.smooth + (1 - SMOOTHING) * loss
        now = time.perf_counter()
        rate = (step - self.first_step) / max(now - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{self.smooth:.4f}", rate=f"{rate:.2f}", status="")
        elif not self.quiet and (now - self.last_print >= self.every_s or step == self.max_steps):
            self.last_print = now
            eta = (self.max_steps - step) / rate if rate > 0 else 0.0
            self.console.print(
                f"step {step}/{self.max_steps} loss {self.smooth:.4f} lr {lr:.3g} {rate:.2f} it/s "
                f"eta {time.strftime('%H:%M:%S', time.gmtime(eta))}",
                highlight=False,
            )

    def message(self, text: str) -> None:
        if self.quiet and not text.startswith("warning"):
            return
        style = "yellow" if text.startswith("warning") else None
        self.console.print(text, style=style, highlight=False, markup=False)

    def status(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(self.task, status=text)
        else:  # plain lines (a file, a pipe), or before the bar starts
            self.console.print(f"step {self.step}: {text}" if self.max_steps else text, highlight=False, markup=False)

    def finish(self, task: str) -> None:
        if task == "train" and self.bar is not None:
            self.bar.stop()
            self.bar = None


class DownloadProgress(Reporter):
    """A byte-counting bar for each file of task "download" (`fetch`); nothing when not on a terminal."""

    def __init__(self, console: Console, *, enabled: bool = True):
        self.console, self.enabled = console, enabled and console.is_terminal
        self.bar: Progress | None = None
        self.task = None

    def start(self, task: str, total: int, *, done: int = 0, note: str = "") -> None:
        if task != "download" or not self.enabled:
            return
        self.bar = Progress(
            TextColumn(note or "download"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            console=self.console, transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task("download", total=total or None, completed=done)

    def advance(self, task: str, done: int, **values: float) -> None:
        if task == "download" and self.bar is not None:
            self.bar.update(self.task, completed=done)

    def finish(self, task: str) -> None:
        if task == "download" and self.bar is not None:
            self.bar.stop()
            self.bar = None


class EvalProgress(Reporter):
    """`textinv eval`: the images generated of all there are to make, elapsed time, time left and what is being
    drawn, as a live bar on a terminal; otherwise a line every `every_s` seconds and at the end."""

    def __init__(self, console: Console, *, quiet: bool = False, plain: bool | None = None, every_s: float = 10.0):
        self.console, self.quiet, self.every_s = console, quiet, every_s
        self.plain = (not console.is_terminal) if plain is None else plain
        self.bar: Progress | None = None
        self.task = None
        self.total = self.done = 0
        self.t0 = self.last_print = 0.0
        self.now = ""

    def start(self, task: str, total: int, *, done: int = 0, note: str = "") -> None:
        if task != "eval" or self.quiet:
            return
        self.total, self.done = total, done
        self.t0 = self.last_print = time.perf_counter()
        if note:
            self.console.print(note, highlight=False, markup=False)
        if self.plain:
            return
        self.bar = Progress(SpinnerColumn(), TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("images"), TimeElapsedColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[status]}"), console=self.console, transient=False)
        self.bar.start()
        self.task = self.bar.add_task("eval", total=total, completed=done, status="")

    def advance(self, task: str, done: int, **values: float) -> None:
        if task != "eval" or self.quiet:
            return
        self.done = done
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
            return
        now = time.perf_counter()
        if now - self.last_print >= self.every_s or done >= self.total:
            self.last_print = now
            took = now - self.t0
            left = took / done * (self.total - done) if done else 0.0
            self.console.print(f"eval {done}/{self.total} images, {_clock(took)} elapsed, {_clock(left)} left"
                               + (f": {self.now}" if self.now and done < self.total else ""),
                               highlight=False, markup=False)

    def status(self, text: str) -> None:
        self.now = text
        if self.bar is not None and not self.quiet:
            self.bar.update(self.task, status=text)

    def message(self, text: str) -> None:
        if not self.quiet or text.startswith("warning:"):
            self.console.print(text, highlight=False, markup=False)

    def finish(self, task: str) -> None:
        if task == "eval" and self.bar is not None:
            self.bar.stop()
            self.bar = None


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(max(0.0, seconds)))
