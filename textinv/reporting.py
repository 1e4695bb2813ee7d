"""How long-running library calls tell the outside world what they are doing.

The library never prints. `train`, `generate`, `demo`, `fetch` and `eval` take a `Reporter` and call it; the
CLI passes one that draws (`textinv.progress`), a script passes nothing (silence) or its own subclass.

A job is a set of named, counted tasks: training has `"train"` (steps), generation has `"images"` and
`"steps"` (denoising steps of the current image), a download has `"download"` (bytes), `eval` has `"eval"`
(images generated). Free text goes through `message`; lines that start with ``warning:`` are shown even when the
user asked for quiet output; `status` says what a long pause between two counts is spent on.
"""

from __future__ import annotations


class Reporter:
    """The protocol, with every method a no-op: subclass and override what you want to see."""

    def start(self, task: str, total: int, *, done: int = 0, note: str = "") -> None:
        """A counted task begins (or restarts, e.g. the steps of the next image) at `done` of `total`.
        `note` is one line saying what it is, e.g. "training in logs/cat from step 0 to 3000"."""

    def advance(self, task: str, done: int, **values: float) -> None:
        """`done` of the task's total are finished; `values` are figures worth showing (loss, lr)."""

    def finish(self, task: str) -> None:
        """The task ended, normally or not."""

    def message(self, text: str) -> None:
        """One line for the user."""

    def status(self, text: str) -> None:
        """What the job is doing now, between two counts (e.g. "drawing samples_scaled, 4 images" while training
        waits for an image log): shown until the next `status` or `advance`, so a long pause never looks stuck."""


SILENT = Reporter()
