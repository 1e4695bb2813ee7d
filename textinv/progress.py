"""Progress reporting for the CLI: a rich bar on a terminal, plain lines when output goes to a file or a pipe.

The library reports through plain callbacks (e.g. `generate.ProgressFn`); this module turns them into output.
It is, with cli.py, the only place that knows rich.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def is_interactive() -> bool:
    """Live bars only when both stdout and stderr are terminals (not CI, not `| tee`, not --json into a file)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


class ImageProgress:
    """`progress(image, images, step, steps)` for generation: a bar of steps and one of images on a terminal,
    one line per finished image otherwise. Use as a context manager."""

    def __init__(self, console: Console, *, enabled: bool = True, live: bool | None = None) -> None:
        self.console = console
        self.enabled = enabled
        self.live = is_interactive() if live is None else live
        self._bar: Progress | None = None
        self._images = self._steps = None
        self._started = time.perf_counter()

    def __enter__(self) -> ImageProgress:
        if self.enabled and self.live:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._images = self._steps = None

    def __call__(self, image: int, images: int, step: int, steps: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            if step == 0:
                self._started = time.perf_counter()
            elif step == steps:
                took = time.perf_counter() - self._started
                self.console.print(f"image {image + 1}/{images}: {steps} steps in {took:.1f} s", highlight=False)
            return
        if self._images is None:
            self._images = self._bar.add_task("images", total=images)
            self._steps = self._bar.add_task("steps", total=steps)
        if step == 0:
            self._bar.update(self._images, completed=image, total=images)
            self._bar.reset(self._steps, total=steps)
        else:
            self._bar.update(self._steps, completed=step, total=steps)
            if step == steps:
                self._bar.update(self._images, completed=image + 1)
