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
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from textinv import config as config_mod
from textinv import runs
from textinv.config import Config
from textinv.errors import ConfigError, ModelError, TextinvError
from textinv.models import peek
from textinv.models.conditioning import conditioning_for, is_sdxl
from textinv.models.loading import base_model_of, load_pipeline, model_family, resolve_device
from textinv.models.tokens import SplicedEmbedding, add_placeholders, expand_placeholders, replace_module
from textinv.reporting import Reporter
from textinv.training import data
from textinv.training.image_log import log_images

TRACKERS = {"none": [], "tensorboard": ["tensorboard"], "wandb": ["wandb"], "all": ["tensorboard", "wandb"]}


class TrainingInterrupted(TextinvError):
    """Ctrl-C: a checkpoint was written (or the last one kept) and the run can be resumed."""

    exit_code = 130

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


def compute_loss(unet, condition, noisy, timesteps, ids, target, autocast_dtype, device) -> torch.Tensor:
    """One forward pass: conditioning (with the spliced rows), UNet, MSE against the target in float32."""
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        pred = unet(noisy, timesteps, **condition(ids)).sample
    return F.mse_loss(pred.float(), target.float())


def lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the base rate at step s: linear warmup, then constant / linear to 0 / cosine to 0."""

    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def resolve_precision(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the frozen modules, or None for plain float32. `auto` takes `accelerate launch
    --mixed_precision` (or a saved `accelerate config`) when one was given, else bf16/fp16 on a GPU, none on CPU."""
    if mixed_precision == "auto":
        mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "auto")
    if mixed_precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if mixed_precision == "no":
        return None
    if mixed_precision == "fp16" and device.type == "cpu":
        raise ConfigError("mixed_precision fp16 needs a GPU; on the CPU use bf16 or no")
    return torch.float16 if mixed_precision == "fp16" else torch.bfloat16


def make_accelerator(train_cfg):
    """The Accelerator: the process group (gloo on CPUs, NCCL on GPUs) and trackers. Mixed precision and the
    gradient averaging stay in the loop: only one small Parameter learns, so no model is wrapped."""
    from accelerate import Accelerator

    cpu = train_cfg.device == "cpu" or (train_cfg.device == "auto" and not torch.cuda.is_available())
    return Accelerator(cpu=cpu, mixed_precision="no")


def effective_batch(cfg: Config, processes: int) -> tuple[float, str]:
    """(learning rate, a line saying how it and the samples per optimizer step were worked out)."""
    o, b = cfg.optim, cfg.data.batch_size
    total = b * o.gradient_accumulation_steps * processes
    lr = o.learning_rate * (total if o.scale_lr else 1)
    how = (f"effective batch {total} = {b} per process x {o.gradient_accumulation_steps} accumulation x "
           f"{processes} process(es); learning rate {lr:g}"
           + (f" = {o.learning_rate:g} x {total} (optim.scale_lr)" if o.scale_lr else ""))
    return lr, how


def train(cfg: Config, *, reporter: Reporter | None = None, resume: str | Path | None = None) -> RunResult:
    """Train the placeholder embeddings described by `cfg` (already validated); `resume` continues a run folder."""
    from accelerate.utils import broadcast_object_list, gather_object
    from diffusers import DDPMScheduler

    acc = make_accelerator(cfg.train)
    main, world = acc.is_main_process, acc.num_processes
    reporter = (reporter or Reporter()) if main else Reporter()  # one process reports
    device = torch.device(acc.device.type, acc.device.index) if world > 1 else resolve_device(cfg.train.device)
    if device.type == "cpu":
        device = torch.device("cpu")
    autocast_dtype = resolve_precision(cfg.train.mixed_precision, device)
    p = cfg.personalization
    images, items = data.build_items(p, cfg.data, reporter)

    pipe = load_frozen(cfg, device)
    unet, vae = pipe.unet, pipe.vae
    # [conditioning] one text encoder, or SDXL's two (textinv/conditioning.py); the config must fit the model
    condition = conditioning_for(pipe, cfg.data.resolution)
    peek.check_config(cfg.model.family, is_sdxl(pipe), model_family(pipe), len(p.placeholder_strings))
    bases, first_ids, vectors = [], [], []
    for k, (tokenizer, text_encoder) in enumerate(condition.encoders):  # a row for each placeholder in each encoder
        base = text_encoder.get_input_embeddings()
        first_id = len(tokenizer)
        if first_id > base.num_embeddings:
            raise ModelError(f"tokenizer ({first_id} tokens) is larger than the text encoder's table ({base.num_embeddings})")
        vecs, expansions = add_placeholders(tokenizer, base.weight, p, first_id, reporter if k == 0 else Reporter())
        bases.append(base)
        first_ids.append(first_id)
        vectors.append(vecs)
    # the VAE stays float32 (fp16 VAEs are known to overflow); it encodes each (image, flip) once, when first drawn
    cache = data.cache_latents(vae, images, device)
    if autocast_dtype is not None:  # cast the frozen weights once rather than on every op of every step
        for _, text_encoder in condition.encoders:
            text_encoder.to(autocast_dtype)
        unet.to(autocast_dtype)
    # [conditioning] one float32 Parameter whatever the precision; each encoder's splice reads its columns of it
    learned = nn.Parameter(torch.cat(vectors, dim=1).to(device))
    splices = [SplicedEmbedding(base, learned, first_id, columns)
               for base, first_id, columns in zip(bases, first_ids, condition.columns(), strict=True)]
    for (_, text_encoder), base, spliced in zip(condition.encoders, bases, splices, strict=True):
        replace_module(text_encoder, base, spliced)
    prompt_ids = [condition.tokenize([expand_placeholders(s, expansions) for s in it.prompts]).to(device)
                  for it in items]
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction = cfg.model.prediction_type or noise_sched.config.prediction_type
    if prediction not in ("epsilon", "v_prediction"):
        raise ModelError(f"the model predicts {prediction!r}; textinv trains epsilon and v_prediction models")
    noise_sched.register_to_config(prediction_type=prediction)

    o = cfg.optim
    lr, how = effective_batch(cfg, world)
    optimizer = torch.optim.AdamW([learned], lr=lr, betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_epsilon,
                                  weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(o.lr_scheduler, o.lr_warmup_steps, cfg.train.max_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    generator = torch.Generator().manual_seed(cfg.train.seed)  # the same on every process: see data.Batches
    sampler = data.EpochSampler(len(items), cfg.data.repeats, generator)
    batches = data.Batches(items=items, prompt_ids=prompt_ids, cache=cache, scaling=vae.config.scaling_factor,
                           noise_scheduler=noise_sched, prediction=prediction, flip_p=cfg.data.flip_p,
                           sampler=sampler, generator=generator, device=device, rank=acc.process_index,
                           world=world)
    training = (learned, optimizer, scheduler, scaler, generator, batches)

    step = 0
    if resume is not None:
        run_dir = Path(resume)
        step = restore(run_dir, acc, reporter, *training)
    else:
        run_dir = None
        if main:
            run_dir = runs.new_run_dir(cfg.log.output_dir, runs.run_name(cfg))
            runs.write_text(run_dir / "config.yaml", f"# {how}\n" + config_mod.dump_config(cfg))
        run_dir = Path(broadcast_object_list([str(run_dir) if run_dir else None])[0])
    name = runs.run_name(cfg)
    base_model = base_model_of(pipe, cfg.model.source)  # source, A1111 hash of a single file, hub commit

    def embedding_at(s: int):  # [conditioning] SDXL: clip_l's and clip_g's columns
        return runs.embedding_of(condition.split(learned.detach().float().cpu()), p, name, s, base_model)

    # [conditioning] an SDXL .pt holds {clip_l, clip_g} and nothing else: the .safetensors, which also keeps the
    # placeholder and the metadata, is the run's embedding
    formats = list(dict.fromkeys(["safetensors", *cfg.log.formats])) if is_sdxl(pipe) else cfg.log.formats
    finals = runs.final_paths(embedding_at(step), run_dir, name, formats)
    if step >= cfg.train.max_steps and all(f.exists() for f in finals):
        raise ConfigError(f"{run_dir} already finished at step {step}; pass a larger --max-steps to train further")
    reporter.message(how)
    writer = runs.RunWriter(run_dir, name, main)
    tracking = start_trackers(acc, cfg, run_dir)
    last_good = step if resume is not None else None

    def checkpoint(s: int) -> None:
        nonlocal last_good
        states = gather_object([(generator.get_state(), sampler.state_dict(), list(batches.drawn.items()))])
        writer.checkpoint(s, embedding_at(s), {
            "step": s, "learned": learned.detach().float().cpu(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": [g for g, _, _ in states],
            "sampler": [smp for _, smp, _ in states], "drawn": [d for _, _, d in states],
            "scaler": scaler.state_dict(),
        })
        last_good = s

    def sample_images(s: int) -> None:
        if main:
            log_images(pipe, run_dir / "images", s, cfg.log, p, images, batches, expansions, cfg.data.resolution,
                       cfg.train.seed, autocast_dtype, device)
            writer.plot()

    # textinv.training.validation hook (1/2): validation loss, prompts, checkpoint scores, early stop
    from textinv.training.validation import Validation

    validation = Validation(cfg, run_dir, batches, pipe=pipe, expansions=expansions, embedding_at=embedding_at,
                            forward=lambda *d: compute_loss(unet, condition, *d, autocast_dtype, device),
                            reporter=reporter, autocast_dtype=autocast_dtype, enabled=main, start_step=step)

    verb = "resuming" if step else "training"
    reporter.start("train", cfg.train.max_steps, done=step,
                   note=f"{verb} in {run_dir} from step {step} to {cfg.train.max_steps}")
    losses: list[float] = []
    batch, accum = cfg.data.batch_size, o.gradient_accumulation_steps
    try:
        with _ctrl_c() as stop:
            while step < cfg.train.max_steps:
                total = torch.zeros((), device=device)
                for _ in range(accum):  # micro-steps: gradients add up locally, nothing is all-reduced
                    noisy, t, ids, target = batches.draw(batch)
                    loss = compute_loss(unet, condition, noisy, t, ids, target, autocast_dtype, device) / accum
                    scaler.scale(loss).backward()
                    total += loss.detach()
                # one all-reduce per optimizer step for the loss and the stop request, one for the gradient
                agreed = acc.reduce(torch.stack([total, torch.tensor(float(stop.is_set()), device=device)]), "sum")
                value, stopping = float(agreed[0]) / world, bool(agreed[1] > 0)
                if not math.isfinite(value):
                    kept = (f"the last good checkpoint is {run_dir / 'embeddings' / f'{name}-{last_good}.pt'}"
                            if last_good is not None else "no checkpoint was written yet")
                    raise NonFiniteLoss(
                        f"loss became {value} at step {step + 1}; stopped, {kept}. Lower optim.learning_rate or "
                        "use --set train.mixed_precision=no"
                    )
                if world > 1:
                    learned.grad = acc.reduce(learned.grad, "mean")
                current_lr = _update(optimizer, scheduler, scaler, learned, o.max_grad_norm)
                step += 1
                losses.append(value)
                writer.log(step, value, current_lr)
                if tracking:
                    acc.log({"train/loss": value, "train/lr": current_lr}, step=step)
                reporter.advance("train", step, loss=value, lr=current_lr)
                if cfg.log.image_every and step % cfg.log.image_every == 0:
                    sample_images(step)  # before the checkpoint: a kill while logging redoes the step and its log
                if validation.after_step(step):  # textinv.training.validation hook (2/2): early stop; the finish below saves
                    break
                if cfg.log.save_every and step % cfg.log.save_every == 0 and step < cfg.train.max_steps:
                    checkpoint(step)
                if stopping and step < cfg.train.max_steps:
                    checkpoint(step)
                    raise TrainingInterrupted(run_dir, step, saved=True, quiet=not main)
            if losses:  # the last image log, then the last state: what a resume after a kill here trusts
                if cfg.log.image_every and step % cfg.log.image_every:
                    sample_images(step)
                checkpoint(step)
            else:
                reporter.message(f"the run reached step {step} but its final files were not written; writing them")
            files = writer.finals(embedding_at(step), formats)
            writer.plot()
    except KeyboardInterrupt:  # a second Ctrl-C, mid-step: the last checkpoint stands
        raise TrainingInterrupted(run_dir, last_good, saved=False, quiet=not main) from None
    finally:
        writer.close()
        if tracking:
            acc.end_training()
        reporter.finish("train")
    acc.wait_for_everyone()
    for (_, text_encoder), base, spliced in zip(condition.encoders, bases, splices, strict=True):
        replace_module(text_encoder, spliced, base)
    return RunResult(run_dir=run_dir, step=step, embedding_path=next(iter(finals)), files=files, losses=losses,
                     prediction_type=prediction)


def start_trackers(acc, cfg: Config, run_dir: Path) -> bool:
    """Start the `--report-to` trackers (TensorBoard events under <run>/tensorboard/textinv/); False if none."""
    wanted = TRACKERS[cfg.log.report_to]
    if not wanted:
        return False
    from accelerate.tracking import filter_trackers

    acc.project_configuration.set_directories(str(run_dir / "tensorboard"))
    acc.log_with = filter_trackers(wanted, acc.logging_dir)
    flat = {f"{section}.{k}": v if isinstance(v, (int, float, str, bool)) else str(v)
            for section, values in config_mod.to_dict(cfg).items() for k, v in values.items()}
    acc.init_trackers("textinv", config=flat, init_kwargs={"wandb": {"name": run_dir.name, "dir": str(run_dir)}})
    return True


def load_frozen(cfg: Config, device: torch.device):
    """The float32 pipeline with every module frozen (no weight gradients), on diffusers' default SDPA attention
    (`set_default_attn_processor` would switch SDPA off), with gradient checkpointing in the UNet if asked."""
    pipe = load_pipeline(cfg.model.source, model_config=cfg.model.config, device=device, dtype=torch.float32)
    for module in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None), pipe.unet, pipe.vae):
        if module is None:  # [conditioning] only SDXL has text_encoder_2
            continue
        module.requires_grad_(False)
        module.eval()
    _check_resolution(cfg.data.resolution, pipe.unet, pipe.vae)
    if cfg.train.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def restore(run_dir: Path, acc, reporter: Reporter, learned, optimizer, scheduler, scaler, generator, batches) -> int:
    """Load the run's latest intact state into the training objects; returns its step."""
    state = runs.load_latest_state(run_dir, reporter.message)
    if len(state["rng"]) != acc.num_processes:
        raise ConfigError(f"{run_dir} was trained by {len(state['rng'])} process(es); resume it with as many "
                          f"(this is {acc.num_processes})")
    rank = acc.process_index
    learned.data.copy_(state["learned"].to(learned.device))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["rng"][rank])
    batches.sampler.load_state_dict(state["sampler"][rank])
    batches.drawn = {int(i): (int(f), int(c)) for i, (f, c) in state.get("drawn", [[]] * (rank + 1))[rank]}
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if acc.is_main_process:
        runs.truncate_csv(run_dir / "loss.csv", int(state["step"]))
    return int(state["step"])


def _update(optimizer, scheduler, scaler, learned: torch.Tensor, max_grad_norm: float) -> float:
    """One optimizer step on the (already averaged) gradient; returns the learning rate it used."""
    scaler.unscale_(optimizer)
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([learned], max_grad_norm)
    lr = optimizer.param_groups[0]["lr"]
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return lr


def _check_resolution(resolution: int, unet, vae) -> None:
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet_factor = 2 ** (len(unet.config.block_out_channels) - 1)
    if resolution % (vae_factor * unet_factor):
        raise ConfigError(
            f"resolution {resolution} does not fit this model: it must be a multiple of {vae_factor * unet_factor}"
        )


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
