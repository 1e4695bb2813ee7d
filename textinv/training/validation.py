"""Validation while training: a deterministic validation loss, validation prompts, checkpoint scores, early stop.

The training loop calls `Validation.after_step(step)` once per optimizer step; everything else happens here:

- every `log.val_loss_every` steps, the loss on `log.val_samples` noisy latents drawn once at the start (latents,
  timesteps, noise and prompts from their own generator, seeded by `train.seed`): the same inputs every time, so
  its changes are the embedding's, not the draw's. Written to validation.csv (step,val_loss).
- every `log.image_every` steps, `log.prompts` (with `log.negative_prompt`) rendered to
  images/validation_gs-<step>.png, one row per prompt, `log.num_images` seeds per row.
- every `log.eval_every` steps, the checkpoint scored as `textinv eval` does (rows appended to eval.json).
- `train.early_stop` N: stop when the validation loss has not improved for N validation-loss checks.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch

from textinv.atomic import atomic_path, write_text
from textinv.config import Config
from textinv.reporting import Reporter
from textinv.runs import VALIDATION_CSV


class Validation:
    """Built once the training batches exist. `forward(noisy, t, ids, target)` returns the loss tensor,
    `embedding_at(step)` the checkpoint's Embedding; `pipe` is the training pipeline (placeholders spliced in,
    written in prompts as `expansions` say); `start_step` > 0 when resuming."""

    def __init__(self, cfg: Config, run_dir: Path, batches, *, pipe, expansions: dict[str, str], forward: Callable,
                 embedding_at: Callable, reporter: Reporter, autocast_dtype=None, enabled: bool = True,
                 start_step: int = 0):
        from textinv.runs import truncate_csv
        from textinv.training.data import EpochSampler

        self.cfg, self.run_dir, self.enabled = cfg, run_dir, enabled
        self.pipe, self.expansions, self.autocast_dtype = pipe, expansions, autocast_dtype
        self.forward, self.embedding_at, self.reporter = forward, embedding_at, reporter
        if enabled and start_step:
            truncate_csv(run_dir / VALIDATION_CSV, start_step)
        self.best_loss: float | None = None
        self.since_best = 0
        self.evaluator = None
        self.eval_rows: list = []
        self._fixed: list[tuple] | None = None
        g = torch.Generator().manual_seed(cfg.train.seed + 10_000)
        self._own = dataclasses.replace(batches, generator=g, sampler=EpochSampler(len(batches.items), 1, g), drawn={})

    @property
    def fixed(self) -> list[tuple]:
        """The validation draws, made at the first validation rather than before the first step (they need latents
        the lazy cache would otherwise encode up front). Their own generator makes them the same whenever drawn."""
        if self._fixed is None:
            self._fixed = []
            left = self.cfg.log.val_samples
            while left > 0:  # in micro-batches, as training draws them
                k = min(left, self.cfg.data.batch_size)
                self._fixed.append(self._own.draw(k))
                left -= k
        return self._fixed

    @torch.no_grad()
    def loss(self) -> float:
        """The mean loss over the fixed validation draws."""
        total = sum(float(self.forward(*draw)) * len(draw[1]) for draw in self.fixed)
        return total / sum(len(draw[1]) for draw in self.fixed)

    def after_step(self, step: int) -> bool:
        """Run what is due at `step`; True asks the loop to stop early."""
        log = self.cfg.log
        stop = False
        if log.val_loss_every and step % log.val_loss_every == 0:
            stop = self._validation_loss(step)
        if self.enabled and log.prompts and log.image_every and step % log.image_every == 0:
            self.render_prompts(step)
        if self.enabled and log.eval_every and step % log.eval_every == 0:
            self.score(step)
        return stop

    def _validation_loss(self, step: int) -> bool:
        value = self.loss()
        if self.enabled:
            path = self.run_dir / VALIDATION_CSV
            new = not path.is_file()
            with open(path, "a") as f:
                f.write(("step,val_loss\n" if new else "") + f"{step},{value:.6g}\n")
        if self.best_loss is None or value < self.best_loss:
            self.best_loss, self.since_best = value, 0
            return False
        self.since_best += 1
        patience = self.cfg.train.early_stop
        if patience and self.since_best >= patience:
            self.reporter.message(f"early stop at step {step}: the validation loss has not improved on "
                                  f"{self.best_loss:.4g} for {patience} check(s)")
            return True
        return False

    def render(self, prompt: str, negative: str) -> list:
        """`log.num_images` images of `prompt` from the training pipeline, seeds train.seed, train.seed+1, ..."""
        from textinv.generation.sampling import txt2img
        from textinv.models.tokens import expand_placeholders

        log, dev = self.cfg.log, self.pipe.device
        size = self.cfg.data.resolution
        with torch.autocast(dev.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            return [g.image for g in txt2img(self.pipe, expand_placeholders(prompt, self.expansions),
                                             negative=expand_placeholders(negative, self.expansions),
                                             n=log.num_images, steps=log.sample_steps, cfg=log.guidance_scale,
                                             seed=self.cfg.train.seed, width=size, height=size)]

    def render_prompts(self, step: int) -> Path:
        from textinv.pictures import contact_sheet

        log = self.cfg.log
        pics = [im for prompt in log.prompts for im in self.render(prompt, log.negative_prompt)]
        path = self.run_dir / "images" / f"validation_gs-{step:06d}.png"
        with atomic_path(path) as tmp:
            contact_sheet(pics, columns=log.num_images).save(tmp, format="PNG")
        return path

    def score(self, step: int) -> None:
        """Score this step's embedding as `textinv eval` does; eval.json holds the rows so far and the best."""
        from textinv.evaluation.evaluate import (
            GRIDS_DIR,
            RESULTS_FILE,
            Candidate,
            EvalResult,
            EvalSettings,
            Evaluator,
            best_row,
        )
        from textinv.formats.files import save_embedding
        from textinv.models.loading import load_pipeline

        log, p = self.cfg.log, self.cfg.personalization
        emb = self.embedding_at(step)
        file = save_embedding(emb, self.run_dir / "embeddings" / f"{emb.name}-{step}.pt", format="pt", force=True)
        settings = EvalSettings(seeds=log.num_images, seed=self.cfg.train.seed, steps=log.sample_steps,
                                           cfg=log.guidance_scale, clip=log.eval_clip, dino=log.eval_dino)
        grids = self.run_dir / GRIDS_DIR
        if self.evaluator is None:
            notes: list[str] = []
            pipe = load_pipeline(self.cfg.model.source, model_config=self.cfg.model.config,
                                        device=self.cfg.train.device)
            self.evaluator = Evaluator(pipe, Path(self.cfg.data.paths[0]), settings,
                                                  pipe.textinv.kind == "toy", notes, self.reporter)
            self.notes = notes
            baseline = Candidate(label=f"init word ({p.initializer_words[0]})", step=None, embedding=None)
            self.eval_rows.append(self.evaluator.score(baseline, 0, p.initializer_words[0], grids, self.run_dir))
        cand = Candidate(label=f"step {step}", step=step, embedding=emb, file=str(file))
        row = self.evaluator.score(cand, len(self.eval_rows), p.initializer_words[0], grids, self.run_dir)
        self.eval_rows.append(row)
        result = EvalResult(rows=self.eval_rows, best=best_row(self.eval_rows, settings.margin),
                                       init_word=p.initializer_words[0], model=self.cfg.model.source,
                                       data=self.cfg.data.paths[0], settings=settings, notes=self.notes)
        write_text(self.run_dir / RESULTS_FILE, json.dumps(result.to_json(), indent=2) + "\n")
        shown = "n/a" if row.identity is None else f"{row.identity:.3f}"
        self.reporter.message(f"eval at step {step}: identity {shown}"
                              + (f", editability {row.editability:.3f}" if row.editability is not None else ""))


