"""`textinv train` for tests run under `accelerate launch`: saves this process's learned rows after every optimizer
step to <prefix>-rank<N>.pt, so a test can check that every process holds the same rows.

    accelerate launch ... tests/launch_probe.py PREFIX train DIR ...
"""

import os
import sys

import torch

from textinv.cli import main
from textinv.training import loop as trainmod

rows: list[torch.Tensor] = []
_real_update = trainmod._update


def _recording_update(optimizer, scheduler, scaler, learned, max_grad_norm):
    lr = _real_update(optimizer, scheduler, scaler, learned, max_grad_norm)
    rows.append(learned.detach().clone())
    return lr


if __name__ == "__main__":
    prefix = sys.argv.pop(1)
    trainmod._update = _recording_update
    try:
        main()
    finally:
        torch.save(torch.stack(rows) if rows else torch.zeros(0), f"{prefix}-rank{os.environ.get('RANK', '0')}.pt")
