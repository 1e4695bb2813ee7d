"""What a checkpoint holds and how a run starts or resumes: the learned rows, the optimizer, its schedule, the
loss scaler, every process's draws and the levers' EMA (`Learning`), and the rows as an Embedding
(`LearnedEmbedding`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textinv.errors import ConfigError
from textinv.reporting import Reporter
from textinv.runs import Run, run_name
from textinv.training.data import Batches
from textinv.training.levers import Levers


@dataclass
class Learning:
    """Everything that changes from step to step; a resumed run continues exactly because all of it is saved."""

    rows: torch.nn.Parameter
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    batches: Batches  # holds the generator every draw comes from, and the data order
    levers: Levers  # regularisation, norm control and the EMA (training/levers.py)

    def state(self, step: int, gather: Callable[[list], list]) -> dict[str, Any]:
        """The state to save at `step`; `gather` collects every process's draws (accelerate's gather_object)."""
        b = self.batches
        states = gather([(b.generator.get_state(), b.sampler.state_dict(), list(b.drawn.items()))])
        return {"step": step, "learned": self.rows.detach().float().cpu(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": [g for g, _, _ in states],
                "sampler": [smp for _, smp, _ in states], "drawn": [d for _, _, d in states],
                "scaler": self.scaler.state_dict(),
                **({"ema": self.levers.ema.state()} if self.levers.ema is not None else {})}

    def load(self, state: dict[str, Any], rank: int) -> int:
        """Put a saved state back (this process's draws are entry `rank`); returns its step."""
        b = self.batches
        if tuple(state["learned"].shape) != tuple(self.rows.shape):
            raise ConfigError(
                f"the run's state holds learned vectors of shape {list(state['learned'].shape)} but this model and "
                f"config make {list(self.rows.shape)}: the config (the model or personalization) was edited after "
                "the run started; put it back as it was, or start a new run"
            )
        self.rows.data.copy_(state["learned"].to(self.rows.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        b.generator.set_state(state["rng"][rank])
        b.sampler.load_state_dict(state["sampler"][rank])
        b.drawn = {int(i): (int(f), int(c)) for i, (f, c) in state.get("drawn", [[]] * (rank + 1))[rank]}
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.levers.ema is not None and "ema" in state:
            self.levers.ema.load(state["ema"])
        return int(state["step"])


def start_run(cfg, resume: str | Path | None, acc, learning: Learning, reporter: Reporter, *,
              comment: str) -> tuple[Run, int]:
    """A new run folder holding `cfg` (made by the main process, `comment` as the config's first line), or the
    `resume` one with its latest intact state loaded into `learning`. Returns the run and its step."""
    from accelerate.utils import broadcast_object_list

    main, name = acc.is_main_process, run_name(cfg)
    if resume is None:
        path = str(Run.create(cfg, comment=comment).path) if main else None
        return Run(broadcast_object_list([path])[0], name=name, main=main), 0
    run = Run.open(resume, name=name, main=main)
    run.update_config(cfg)  # --max-steps N: the saved config says where the run now ends
    state = run.latest_state(reporter.message)
    if len(state["rng"]) != acc.num_processes:
        raise ConfigError(f"{run.path} was trained by {len(state['rng'])} process(es); resume it with as many "
                          f"(this is {acc.num_processes})")
    step = learning.load(state, acc.process_index)
    run.truncate_logs(step)
    return run, step


@dataclass
class LearnedEmbedding:
    """The learned rows as the run's Embedding at a step: one token per placeholder of `p` (the personalization
    config); `split` gives each encoder's part of the rows by its key (`TrainingModel.parts`: SDXL's clip_l and
    clip_g columns, SD3's and Flux.1's t5 too); `base_model` is what `models.base_model_of` says of the model."""

    rows: torch.Tensor
    split: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    p: Any
    name: str
    base_model: dict

    def at(self, step: int, rows: torch.Tensor | None = None):
        """The Embedding of the learned rows (or of `rows`, e.g. their EMA) at `step`."""
        from textinv.formats.embedding import Embedding, Token

        n, p, base = self.p.num_vectors_per_token, self.p, self.base_model
        parts = self.split((self.rows if rows is None else rows).detach().float().cpu())
        tokens = [Token.from_parts(placeholder, {key: v[i * n:(i + 1) * n].clone() for key, v in parts.items()})
                  for i, placeholder in enumerate(p.placeholder_strings)]
        return Embedding(tokens=tokens, name=self.name, step=step, base_model=base["base_model"],
                         base_model_hash=base["base_model_hash"],
                         init_words=dict(zip(p.placeholder_strings, p.initializer_words, strict=True)),
                         extra={"trained_with": "textinv", "learnable_property": p.learnable_property,
                                **base["extra"]})
