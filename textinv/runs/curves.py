"""The run's per-step tables (loss.csv, validation.csv) and the loss plot."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import IO

from textinv.atomic import atomic_path, write_text


class Curve:
    """A CSV with one row per step: `columns` name them, the first is the step, the others are floats."""

    def __init__(self, path: Path, columns: tuple[str, ...]):
        self.path, self.columns = path, columns
        self._file: IO[str] | None = None

    def append(self, step: int, *values: float) -> None:
        """One row (the header first when the file is new); flushed, so a kill loses at most this row."""
        if self._file is None:
            new = not self.path.is_file()
            self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
            if new:
                self._file.write(",".join(self.columns) + "\n")
        self._file.write(",".join([str(step), *(f"{v:.6g}" for v in values)]) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def rows(self) -> list[tuple[int, ...]]:
        """(step, value, ...) of every row; rows that do not parse (a line cut short by a kill, an edit) are left
        out rather than fatal."""
        return [row for row, _ in self._parsed()]

    def truncate(self, step: int) -> None:
        """Keep the rows up to `step` (later ones came from steps a resumed run will redo) and drop the rows that
        do not parse."""
        if not self.path.is_file():
            return
        self.close()
        keep = [line for row, line in self._parsed() if row[0] <= step]
        write_text(self.path, "\n".join([",".join(self.columns), *keep]) + "\n")

    def _parsed(self) -> list[tuple[tuple, str]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(errors="replace").splitlines()[1:]:
            parts = line.split(",")
            if len(parts) != len(self.columns):
                continue
            with contextlib.suppress(ValueError):
                out.append(((int(parts[0]), *(float(p) for p in parts[1:])), line))
        return out


def plot_losses(rows: list[tuple[int, ...]], png_path: Path, validation: list[tuple[int, float]] = ()) -> bool:
    """loss.png (`loss_figure`); False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig = loss_figure(rows, validation)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def loss_figure(rows: list[tuple[int, ...]], validation: list[tuple[int, float]] = ()):
    """The training loss per step (thin), its running mean, the validation loss (dots) and, on the right axis,
    the learning rate: each with a legend entry, both axes named and ticked. `rows` are loss.csv's
    (step, loss, lr); `validation` validation.csv's (step, val_loss)."""
    import matplotlib.pyplot as plt

    steps, losses = [r[0] for r in rows], [r[1] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(steps, losses, lw=0.6, alpha=0.45, color="#7a9ab0", label="loss (each step)")
    if len(losses) >= 2:
        k = max(1, len(losses) // 20)
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, lw=1.8, color="#1f6fb4", label=f"loss, mean of {k} steps")
    if validation:
        ax.plot([s for s, _ in validation], [v for _, v in validation], "o-", ms=4, lw=1.2, color="#d2691e",
                label="validation loss (fixed samples)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (MSE of the predicted noise)")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if rows and len(rows[0]) > 2:
        lr_ax = ax.twinx()
        lr_ax.plot(steps, [r[2] for r in rows], lw=1, ls="--", color="#888888", label="learning rate")
        lr_ax.set_ylabel("learning rate")
        more_h, more_l = lr_ax.get_legend_handles_labels()
        handles, labels = handles + more_h, labels + more_l
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    ax.set_title(f"training loss, steps {steps[0]}-{steps[-1]}" if steps else "training loss (no steps yet)")
    fig.tight_layout()
    return fig
