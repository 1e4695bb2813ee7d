"""The levers between identity and editability: what keeps a learned word from overpowering the rest of the prompt.

A textual-inversion vector that drifts far from the vocabulary (3x its norm is common) draws the concept but
stops obeying the words around it. Each lever is one `optim` config key (see bench/learning.py for what each does
on the toy model):

- `embedding_reg_weight` w: adds w x (the mean over the learned vectors of |v - v_init|^2) to the loss, a pull
  toward the init word's vectors. The paper code's `embedding_to_coarse_loss` (rinongal/textual_inversion,
  ldm/modules/embedding_manager.py, weighted by `model.params.embedding_reg_weight` in ldm/models/diffusion/ddpm.py)
  is the same term for one vector per placeholder; for several it takes the mean of the Gram matrix of the
  differences, which only holds their average back, so textinv takes the mean of each vector's own distance.
- `norm_control: vocab`: after every optimizer step each vector is rescaled to the median norm of the model's
  token vocabulary (OneTrainer's `preserve_embedding_norm`: `AdditionalEmbeddingWrapper.normalize_embeddings`,
  modules/module/AdditionalEmbeddingWrapper.py, called from each `*EmbeddingSetup.after_optimizer_step`);
  `norm_control: cap` only shortens the vectors longer than `norm_cap` x that median.
- `max_drift` r: after every step each vector is pulled back to within r x the vocabulary's median norm of its
  init vector (a projection onto that ball): a hard version of `embedding_reg_weight`, whose distance does not
  depend on how hard the pictures pull (measured on the toy model: the same weight left one seed's vectors 0.05
  from the init word and another's 0.04, and identity went from 94% to 31%).
- `ema_decay` d: an exponential moving average of the vectors, written beside the raw ones (`<name>-ema.pt`),
  updated after every step k (from 0) with decay min((1 + k) / (10 + k), d), as OneTrainer's
  `EMAModuleWrapper.get_current_decay` (modules/module/EMAModule.py), starting from the init vectors.

Min-SNR weighting and masks act on the loss itself (training/objective.py). With SDXL each vector is a row of both
encoders' columns: norms are taken per encoder, against that encoder's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def vocabulary_median_norms(tables: list[torch.Tensor]) -> list[float]:
    """The median L2 norm of the rows of each encoder's token table (the words the model knows)."""
    return [float(t.detach().float().norm(dim=1).median()) for t in tables]


def ema_decay_at(decay: float, k: int) -> float:
    """The decay used at update k (0 for the first step): OneTrainer's warm-up, min((1 + k) / (10 + k), decay)."""
    return min((1 + k) / (10 + k), decay)


@dataclass
class EMA:
    """The moving average of the learned rows and the number of updates it has had (both saved in the state)."""

    decay: float
    value: torch.Tensor
    updates: int = 0

    @torch.no_grad()
    def update(self, rows: torch.Tensor) -> None:
        d = ema_decay_at(self.decay, self.updates)
        self.value.add_((1 - d) * (rows.detach().float() - self.value))
        self.updates += 1

    def state(self) -> dict:
        return {"value": self.value.detach().cpu().clone(), "updates": self.updates}

    def load(self, state: dict) -> None:
        self.value.copy_(state["value"].to(self.value.device))
        self.updates = int(state["updates"])


@dataclass
class Levers:
    """The regularisation, norm control and EMA of one run; `init` is the rows at step 0 (the init words'
    vectors), `columns` each encoder's columns of a row and `medians` its vocabulary's median norm."""

    init: torch.Tensor
    columns: list[slice]
    medians: list[float]
    reg_weight: float = 0.0
    norm_control: str = "none"
    norm_cap: float = 1.0
    max_drift: float = 0.0
    ema: EMA | None = None

    @classmethod
    def from_config(cls, optim, rows: torch.Tensor, columns: list[slice], tables: list[torch.Tensor]) -> Levers:
        """The levers `optim` (the optim config) asks for, around the initial `rows`."""
        init = rows.detach().float().clone()
        ema = EMA(optim.ema_decay, init.clone()) if optim.ema_decay > 0 else None
        return cls(init=init, columns=columns, medians=vocabulary_median_norms(tables),
                   reg_weight=optim.embedding_reg_weight, norm_control=optim.norm_control, norm_cap=optim.norm_cap,
                   max_drift=optim.max_drift, ema=ema)

    def penalty(self, rows: torch.Tensor) -> torch.Tensor | float:
        """The regularisation term to add to the loss: reg_weight x mean over vectors of |v - v_init|^2."""
        if not self.reg_weight:
            return 0.0
        return self.reg_weight * (rows.float() - self.init.to(rows.device)).pow(2).sum(dim=1).mean()

    @torch.no_grad()
    def after_step(self, rows: torch.Tensor) -> None:
        """Norm control and the drift bound on the rows just updated, then the EMA's update."""
        if self.max_drift > 0:
            init = self.init.to(rows.device)
            for columns, median in zip(self.columns, self.medians, strict=True):
                drift = rows[:, columns] - init[:, columns]
                norms = drift.norm(dim=1, keepdim=True).clamp(min=1e-12)
                rows[:, columns] = init[:, columns] + drift * (self.max_drift * median / norms).clamp(max=1.0)
        if self.norm_control != "none":
            for columns, median in zip(self.columns, self.medians, strict=True):
                part = rows[:, columns]
                norms = part.norm(dim=1, keepdim=True).clamp(min=1e-12)
                target = torch.full_like(norms, median)
                if self.norm_control == "cap":
                    target = torch.minimum(norms, target * self.norm_cap)
                rows[:, columns] = part * (target / norms)
        if self.ema is not None:
            self.ema.update(rows)
