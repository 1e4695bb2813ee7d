"""The training loop: only the placeholder rows learn, everything else is frozen and untouched.

Why it is fast: the learned rows are a separate float32 Parameter spliced into the token-embedding lookup (AdamW
never sees the 49k frozen rows), the VAE encodes each image and its mirror once (latent mean and std are cached;
a fresh latent is drawn from them each step, as `latent_dist.sample()` would), frozen modules carry no weight
gradients, attention runs on PyTorch's SDPA kernels, and on a GPU the frozen weights are cast to bf16/fp16 once.

Why it resumes exactly: every random draw (data order, flips, templates, latent samples, noise, timesteps) comes
from one torch.Generator per process whose state is checkpointed with the optimizer, the scheduler and the step.

Several processes (`accelerate launch`): each draws the global micro-batch from the same generator and trains on
its own slice; the learned rows' gradient is averaged across processes once per optimizer step (never on
accumulation micro-steps), so every process takes the same step, the rows stay identical, and N processes at batch
b learn what one process at batch N*b learns; the main process writes the files.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from textinv.config import Config, to_dict
from textinv.errors import ConfigError, Interrupted, TextinvError
from textinv.models.loading import base_model_of
from textinv.models.tokens import expand_placeholders
from textinv.reporting import Reporter
from textinv.runs import Run
from textinv.training import data, setup
from textinv.training.image_log import log_images
from textinv.training.objective import DDPM, min_snr_weights, weighted_mse
from textinv.training.setup import TrainingModel
from textinv.training.state import LearnedEmbedding, Learning, start_run
from textinv.training.validation import Validation


class TrainingInterrupted(Interrupted):
    """Ctrl-C: a checkpoint was written (or the last one kept) and the run can be resumed."""

    def __init__(self, run_dir: Path, step: int | None, saved: bool, quiet: bool = False):
        self.run_dir, self.step, self.saved = run_dir, step, saved
        self.quiet = quiet  # on every process but the main one: the main one says it
        if step is None:
            super().__init__(f"interrupted before the first checkpoint; nothing to resume in {run_dir}, start again")
            return
        what = f"saved a checkpoint at step {step}" if saved else f"kept the checkpoint from step {step}"
        super().__init__(f"interrupted: {what}; resume with: textinv train --resume {run_dir}")


class NonFiniteLoss(TextinvError):
    """The loss became NaN or inf; the run stopped without overwriting the last good checkpoint."""


@dataclass
class RunResult:
    run_dir: Path
    step: int
    embedding_path: Path  # the final .pt (SDXL: .safetensors)
    files: list[Path] = field(default_factory=list)  # every final embedding file (all formats)
    losses: list[float] = field(default_factory=list)  # losses of the steps this call ran
    prediction_type: str = "epsilon"
    max_steps: int = 0

    def to_json(self) -> dict:
        """What `train --json` prints: the run folder, the final files (the run's embedding first), the steps and
        the last step's loss (None when this call ran no step)."""
        files = [self.embedding_path, *(f for f in self.files if f != self.embedding_path)]
        return {"run_dir": str(self.run_dir), "embedding": str(self.embedding_path), "files": [str(f) for f in files],
                "step": self.step, "max_steps": self.max_steps, "final_loss": self.losses[-1] if self.losses else None}


def compute_loss(denoiser, condition, noisy, timesteps, ids, target, autocast_dtype, device, *,
                 weights: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One forward pass: conditioning (with the spliced rows), the denoiser (UNet, SD3's or Flux.1's transformer),
    MSE against the target in float32, each sample's weighted by `weights` and restricted to its `mask` when given
    (training/objective.py)."""
    return weighted_mse(predict(denoiser, condition, noisy, timesteps, ids, autocast_dtype, device), target,
                        weights=weights, mask=mask)


def predict(denoiser, condition, noisy, timesteps, ids, autocast_dtype, device) -> torch.Tensor:
    """The denoiser's prediction for token `ids` (the spliced rows included), under the run's autocast."""
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        return denoiser(noisy, timesteps, condition(ids))


@dataclass
class EditAnchor:
    """Keeps the learned word obeying edits (issue 21; `optim.edit_anchor_weight`, `optim.edit_words`).

    On half of each batch's noisy latents, a training template filled with `<edit word> <placeholder>` (`a photo of
    a green *`) is pulled toward the frozen model's own prediction for the same template with the init word (`a
    photo of a green triangle`): what the model already knows of the init word under that edit is the teacher, as
    the model's own class samples are in DreamBooth's prior preservation (Ruiz et al. 2023, sec. 3.3), so no
    picture of the edit is needed. The choices come from the run's generator (resume stays exact); costs one more
    forward and backward of the denoiser on half the batch, and one forward without gradients."""

    model: TrainingModel
    weight: float
    words: list[str]
    templates: list[str]
    pairs: list[tuple[str, str]]  # (placeholder, its init word)
    generator: torch.Generator

    @classmethod
    def of(cls, model: TrainingModel, optim, p, generator: torch.Generator) -> EditAnchor | None:
        if not optim.edit_anchor_weight:
            return None
        return cls(model, optim.edit_anchor_weight, list(optim.edit_words), data.load_templates(p.learnable_property),
                   list(zip(p.placeholder_strings, p.initializer_words, strict=True)), generator)

    def __call__(self, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        m, k = self.model, max(1, noisy.shape[0] // 2)
        draws = [torch.randint(n, (k,), generator=self.generator).tolist()
                 for n in (len(self.templates), len(self.words), len(self.pairs))]
        student, teacher = [], []
        for t, w, i in zip(*draws, strict=True):
            placeholder, init = self.pairs[i]
            student.append(expand_placeholders(data.fill_prompt(self.templates[t], f"{self.words[w]} {placeholder}"),
                                               m.expansions))
            teacher.append(data.fill_prompt(self.templates[t], f"{self.words[w]} {init}"))
        ids = [m.condition.tokenize(prompts).to(m.device) for prompts in (student, teacher)]
        noisy, timesteps = noisy[:k], timesteps[:k]
        with torch.no_grad():
            target = predict(m.denoiser, m.condition, noisy, timesteps, ids[1], m.precision, m.device).float()
        return self.weight * compute_loss(m.denoiser, m.condition, noisy, timesteps, ids[0], target, m.precision,
                                          m.device)


@dataclass
class Forward:
    """The loss of one draw (noisy, timesteps, ids, target, mask) through the training model, Min-SNR-weighted when
    the optim config's `min_snr_gamma` is above 0; validation uses it too."""

    model: TrainingModel
    optim: Any = None  # the optim config (None: no loss weighting)
    anchor: EditAnchor | None = None  # training only: validation's forward passes run without gradients

    def __post_init__(self):  # the CLI checked this before loading; a library caller of train() is checked here
        setup.check_optim(not isinstance(self.model.objective, DDPM), self.optim)

    def __call__(self, noisy, timesteps, ids, target, mask=None) -> torch.Tensor:
        m, gamma = self.model, self.optim.min_snr_gamma if self.optim is not None else 0.0
        weights = m.objective.weights(timesteps)
        if gamma:
            weights = min_snr_weights(m.objective.scheduler.alphas_cumprod, timesteps, gamma, m.prediction)
        extra = {k: v for k, v in (("weights", weights), ("mask", mask)) if v is not None}
        loss = compute_loss(m.denoiser, m.condition, noisy, timesteps, ids, target, m.precision, m.device, **extra)
        return loss + self.anchor(noisy, timesteps) if self.anchor is not None and torch.is_grad_enabled() else loss


def train(cfg: Config, *, reporter: Reporter | None = None, resume: str | Path | None = None) -> RunResult:
    """Train the placeholder embeddings described by `cfg` (already validated); `resume` continues a run folder."""
    acc = setup.make_accelerator(cfg.train)
    main, world = acc.is_main_process, acc.num_processes
    reporter = (reporter or Reporter()) if main else Reporter()  # one process reports
    device = setup.training_device(acc, cfg.train.device)
    precision = setup.resolve_precision(cfg.train.mixed_precision, device)
    images, items = data.build_items(cfg.personalization, cfg.data, reporter)
    model = setup.prepare_model(cfg.model, cfg.personalization, cfg.data.resolution, cfg.train.gradient_checkpointing,
                                device, precision, reporter, cfg.train, setup.memory_wish(cfg))
    batches = setup.make_batches(model, images, items, cfg.data, cfg.train.seed, acc.process_index, world)
    lr, how = setup.effective_batch(cfg.optim, cfg.data.batch_size, world)
    learning = setup.make_learning(model, batches, cfg.optim, lr, cfg.train.max_steps)
    run, step = start_run(cfg, resume, acc, learning, reporter, comment=how)
    embedding = LearnedEmbedding(model.learned, model.parts, cfg.personalization, run.name,
                                 base_model_of(model.pipe, cfg.model.source))  # source, A1111 hash, hub commit
    formats = setup.final_formats(cfg.log.formats, model.multi_encoder)
    finals = run.final_paths(embedding.at(step), formats)
    if step >= cfg.train.max_steps and all(f.exists() for f in finals):
        raise ConfigError(f"{run.path} already finished at step {step}; pass a larger --max-steps to train further")
    reporter.message(how)
    tracking = setup.start_trackers(acc, cfg.log.report_to, to_dict(cfg), run)
    forward = Forward(model, cfg.optim, EditAnchor.of(model, cfg.optim, cfg.personalization, batches.generator))
    log, p, max_steps = cfg.log, cfg.personalization, cfg.train.max_steps
    validation = Validation(run, log, cfg.train.seed, model=model, batches=batches, batch_size=cfg.data.batch_size,
                            forward=forward, embedding_at=embedding.at, reporter=reporter,
                            patience=cfg.train.early_stop)
    last_good = step if resume is not None else None
    reporter.start("train", max_steps, done=step,
                   note=f"{'resuming' if step else 'training'} in {run.path} from step {step} to {max_steps}")
    losses, batch, accum = [], cfg.data.batch_size, cfg.optim.gradient_accumulation_steps  # losses: this call's steps
    try:
        with _ctrl_c() as stop:
            while step < max_steps:
                total = torch.zeros((), device=device)
                for _ in range(accum):  # micro-steps: gradients add up locally, nothing is all-reduced
                    loss = forward(*batches.draw(batch)) / accum
                    learning.scaler.scale(loss + learning.levers.penalty(model.learned) / accum).backward()
                    total += loss.detach()
                value, stopping = _agree(acc, total, stop.is_set())  # one all-reduce for these, one for the gradient
                if not math.isfinite(value):
                    raise _non_finite(value, step + 1, run, last_good)
                if world > 1:
                    model.learned.grad = acc.reduce(model.learned.grad, "mean")
                current_lr = _update(learning.optimizer, learning.scheduler, learning.scaler, model.learned,
                                     cfg.optim.max_grad_norm)
                step += 1
                losses.append(value)
                run.log_loss(step, value, current_lr)
                if tracking:
                    acc.log({"train/loss": value, "train/lr": current_lr}, step=step)
                reporter.advance("train", step, loss=value, lr=current_lr)
                # the image log before the checkpoint: a kill while logging redoes the step and its log
                if log.image_every and step % log.image_every == 0:
                    _log_images(run, step, model, batches, images, log, p, cfg.train.seed, reporter.status)
                if validation.after_step(step):  # early stop; the finish below saves
                    break
                if ((log.save_every and step % log.save_every == 0) or stopping) and step < max_steps:
                    last_good = _checkpoint(run, step, embedding, learning, reporter.status)
                if stopping and step < max_steps:
                    raise TrainingInterrupted(run.path, step, saved=True, quiet=not main)
            if losses:  # the last image log, then the last state: what a resume after a kill here trusts
                if log.image_every and step % log.image_every:
                    _log_images(run, step, model, batches, images, log, p, cfg.train.seed, reporter.status)
                _checkpoint(run, step, embedding, learning, reporter.status)
            else:
                reporter.message(f"the run reached step {step} but its final files were not written; writing them")
            files = _write_finals(run, step, embedding, learning, formats)
            run.plot_losses()
    except KeyboardInterrupt:  # a second Ctrl-C, mid-step: the last checkpoint stands
        raise TrainingInterrupted(run.path, last_good, saved=False, quiet=not main) from None
    finally:
        run.close()
        if tracking:
            acc.end_training()
        reporter.finish("train")
    acc.wait_for_everyone()
    model.unsplice()
    return RunResult(run_dir=run.path, step=step, embedding_path=next(iter(finals)), files=files, losses=losses,
                     prediction_type=model.prediction, max_steps=max_steps)


def _agree(acc, total: torch.Tensor, stop: bool) -> tuple[float, bool]:
    """The step's loss averaged over the processes, and whether any of them was asked to stop: one all-reduce."""
    agreed = acc.reduce(torch.stack([total, torch.tensor(float(stop), device=total.device)]), "sum")
    return float(agreed[0]) / acc.num_processes, bool(agreed[1] > 0)


def _non_finite(value: float, step: int, run: Run, last_good: int | None) -> NonFiniteLoss:
    kept = (f"the last good checkpoint is {run.checkpoint_path(last_good)}" if last_good is not None
            else "no checkpoint was written yet")
    return NonFiniteLoss(f"loss became {value} at step {step}; stopped, {kept}. Lower optim.learning_rate or "
                         "use --set train.mixed_precision=no")


def _update(optimizer, scheduler, scaler, learned: torch.Tensor, max_grad_norm: float) -> float:
    """One optimizer step on the (already averaged) gradient; returns the learning rate it used. (The levers' norm
    control and EMA run as the optimizer's step hook: setup.make_learning.)"""
    scaler.unscale_(optimizer)
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([learned], max_grad_norm)
    lr = optimizer.param_groups[0]["lr"]
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return lr


def _checkpoint(run: Run, step: int, embedding: LearnedEmbedding, learning: Learning, say) -> int:
    """The embedding (and its EMA) and the state at `step` (every process hands in its draws; the main one
    writes), and loss.png redrawn to match (Ctrl-C's checkpoint included). `say` tells the progress what is
    happening."""
    from accelerate.utils import gather_object

    say("saving the checkpoint")
    ema = learning.levers.ema
    if ema is not None and run.main:  # before the state: resume trusts what the state points at
        run.save_checkpoint_embedding(step, embedding.at(step, ema.value), ema=True)
    run.save_checkpoint(step, embedding.at(step), learning.state(step, gather_object))
    run.plot_losses()
    return step


def _write_finals(run: Run, step: int, embedding: LearnedEmbedding, learning: Learning, formats: list[str]):
    """The final embedding in every format, and its EMA beside it (`<name>-ema.*`) when there is one."""
    files = run.write_finals(embedding.at(step), formats)
    if learning.levers.ema is not None:
        files += run.write_finals(embedding.at(step, learning.levers.ema.value), formats, ema=True)
    return files


def _log_images(run: Run, step: int, model: TrainingModel, batches, images, log, p, seed: int, say) -> None:
    """The image log at `step` (`log`, `p`: the log and personalization configs), and the loss plot redrawn with it
    (main process only); `say` tells the progress which picture is being drawn."""
    if run.main:
        with model.whole(), model.on_device():  # [memory] an offloaded VAE (and T5) come back for the log
            log_images(run, step, model, log, p, images, batches, seed, say=say)
        run.plot_losses()


@contextlib.contextmanager
def _ctrl_c() -> Iterator[threading.Event]:
    """The first Ctrl-C asks the loop to stop at the end of the step; a second one interrupts at once. A repeat
    within a second is the same Ctrl-C: `accelerate launch` forwards the terminal's SIGINT to processes that already
    got it."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    first: list[float] = []

    def handler(signum, frame):
        if flag.is_set() and time.monotonic() - first[0] > 1.0:
            raise KeyboardInterrupt
        if not flag.is_set():
            first.append(time.monotonic())
        flag.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
