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
from collections.abc import Callable
from pathlib import Path

import torch

from textinv.atomic import atomic_path
from textinv.reporting import Reporter
from textinv.runs import Run
from textinv.training.data import Batches, EpochSampler


class Validation:
    """Built once the training batches exist. `log` is the log config, `seed` the run's; `forward(noisy, t, ids,
    target)` returns the loss tensor, `embedding_at(step)` the checkpoint's Embedding; `model` is the training
    model (placeholders spliced in, written in prompts as its `expansions` say); `batch_size` draws the fixed
    samples as training does; `patience` is train.early_stop. Only the main process (`run.main`) writes."""

    def __init__(self, run: Run, log, seed: int, *, model, batches: Batches, batch_size: int, forward: Callable,
                 embedding_at: Callable, reporter: Reporter, patience: int = 0):
        self.run, self.log, self.seed, self.model = run, log, seed, model
        self.batch_size, self.patience = batch_size, patience
        self.forward, self.embedding_at, self.reporter = forward, embedding_at, reporter
        self.best_loss: float | None = None
        self.since_best = 0
        self.evaluator = None
        self.eval_rows: list = []
        self._fixed: list[tuple] | None = None
        g = torch.Generator().manual_seed(seed + 10_000)
        self._own = dataclasses.replace(batches, generator=g, sampler=EpochSampler(len(batches.items), 1, g), drawn={})

    @property
    def fixed(self) -> list[tuple]:
        """The validation draws, made at the first validation rather than before the first step (they need latents
        the lazy cache would otherwise encode up front). Their own generator makes them the same whenever drawn."""
        if self._fixed is None:
            self._fixed = []
            left = self.log.val_samples
            while left > 0:  # in micro-batches, as training draws them
                k = min(left, self.batch_size)
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
        log = self.log
        stop = False
        if log.val_loss_every and step % log.val_loss_every == 0:
            stop = self._validation_loss(step)
        if self.run.main and log.prompts and log.image_every and step % log.image_every == 0:
            self.render_prompts(step)
        if self.run.main and log.eval_every and step % log.eval_every == 0:
            self.score(step)
        return stop

    def _validation_loss(self, step: int) -> bool:
        self.reporter.status(f"validation loss on {self.log.val_samples} fixed samples")
        value = self.loss()
        self.run.log_validation(step, value)
        if self.best_loss is None or value < self.best_loss:
            self.best_loss, self.since_best = value, 0
            return False
        self.since_best += 1
        if self.patience and self.since_best >= self.patience:
            self.reporter.message(f"early stop at step {step}: the validation loss has not improved on "
                                  f"{self.best_loss:.4g} for {self.patience} check(s)")
            return True
        return False

    def render(self, prompt: str, negative: str) -> list:
        """`log.num_images` images of `prompt` from the training pipeline, seeds train.seed, train.seed+1, ..."""
        from textinv.generation.sampling import txt2img
        from textinv.models.tokens import expand_placeholders

        log, m = self.log, self.model
        size, precision = m.resolution, m.precision
        with m.on_device(), torch.autocast(m.pipe.device.type, dtype=precision or torch.float32,
                                           enabled=precision is not None):
            return [g.image for g in txt2img(m.pipe, expand_placeholders(prompt, m.expansions),
                                             negative=expand_placeholders(negative, m.expansions),
                                             n=log.num_images, steps=log.sample_steps, cfg=log.guidance_scale,
                                             seed=self.seed, width=size, height=size)]

    def render_prompts(self, step: int) -> Path:
        """images/validation_gs-<step>.png: a row per prompt, labelled with the prompt and each image's seed."""
        from textinv.pictures import described, labelled_sheet

        log = self.log
        self.reporter.status(f"drawing validation, {len(log.prompts) * log.num_images} images")
        with self.model.whole():  # [memory] an offloaded VAE comes back to draw them
            rows = [self.render(prompt, log.negative_prompt) for prompt in log.prompts]
        seeds = [f"seed {self.seed + i}" for i in range(log.num_images)]
        negative = f", negative: {log.negative_prompt}" if log.negative_prompt else ""
        sheet = labelled_sheet(rows, title=f"validation at step {step}: guidance {log.guidance_scale:g}{negative}",
                               row_labels=list(log.prompts), tile_labels=[seeds] * len(rows))
        path = self.run.image_log("validation", step)
        about = (f"step {step}; guidance {log.guidance_scale:g}; prompts: {'; '.join(log.prompts)}{negative}; seeds "
                 f"{self.seed}-{self.seed + log.num_images - 1}")
        with atomic_path(path) as tmp:
            sheet.save(tmp, format="PNG", pnginfo=described(f"validation at step {step}", about))
        return path

    def score(self, step: int) -> None:
        """Score this step's embedding as `textinv eval` does (model, pictures and init word from the run's
        config); eval.json holds the rows so far and the best."""
        from textinv.evaluation.evaluate import Candidate, EvalResult, EvalSettings, Evaluator, best_row
        from textinv.models.loading import load_pipeline

        log, run = self.log, self.run
        emb = self.embedding_at(step)
        file = run.save_checkpoint_embedding(step, emb)
        settings = EvalSettings(seeds=log.num_images, seed=self.seed, steps=log.sample_steps, cfg=log.guidance_scale,
                                clip=log.eval_clip, dino=log.eval_dino)
        if self.evaluator is None:
            cfg = run.config(check=False)
            self.data, self.init_word = cfg.data.paths[0], cfg.personalization.initializer_words[0]
            self.notes: list[str] = []
            pipe = load_pipeline(cfg.model.source, model_config=cfg.model.config, device=cfg.train.device)
            self.evaluator = Evaluator(pipe, Path(self.data), settings, pipe.textinv.kind == "toy", self.notes,
                                       self.reporter)
            baseline = Candidate(label=f"init word ({self.init_word})", step=None, embedding=None)
            self.eval_rows.append(self.evaluator.score(baseline, 0, self.init_word, run))
        cand = Candidate(label=f"step {step}", step=step, embedding=emb, file=str(file))
        row = self.evaluator.score(cand, len(self.eval_rows), self.init_word, run)
        self.eval_rows.append(row)
        result = EvalResult(rows=self.eval_rows, best=best_row(self.eval_rows, settings.margin),
                            init_word=self.init_word, model=self.evaluator.pipe.textinv.name, data=self.data,
                            settings=settings, notes=self.notes)
        run.write_eval(result.to_json())
        shown = "n/a" if row.identity is None else f"{row.identity:.3f}"
        self.reporter.message(f"eval at step {step}: identity {shown}"
                              + (f", editability {row.editability:.3f}" if row.editability is not None else ""))
