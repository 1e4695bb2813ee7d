"""The training loop: only the placeholder rows learn, everything else is frozen and untouched.

Why it is fast: the learned rows are a separate float32 Parameter spliced into the token-embedding lookup (AdamW
never sees the 49k frozen rows), the VAE encodes each image and its mirror once (latent mean and std are cached;
a fresh latent is drawn from them each step, as `latent_dist.sample()` would), frozen modules carry no weight
gradients, attention runs on PyTorch's SDPA kernels, and on a GPU the frozen weights are cast to bf16/fp16 once.

Why it resumes exactly: every random draw (data order, flips, templates, latent samples, noise, timesteps) comes
from one torch.Generator whose state is checkpointed with the optimizer, the scheduler and the step.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from textinv import config as config_mod
from textinv import data as data_mod
from textinv import models, runs
from textinv.atomic import atomic_path
from textinv.config import Config
from textinv.errors import ConfigError, DataError, ModelError, TextinvError
from textinv.reporting import Reporter


class TrainingInterrupted(TextinvError):
    """Ctrl-C: a checkpoint was written (or the last one kept) and the run can be resumed."""

    exit_code = 130

    def __init__(self, run_dir: Path, step: int | None, saved: bool):
        self.run_dir, self.step, self.saved = run_dir, step, saved
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
    embedding_path: Path  # the final .pt
    files: list[Path] = field(default_factory=list)  # every final embedding file (all formats)
    losses: list[float] = field(default_factory=list)  # losses of the steps this call ran
    prediction_type: str = "epsilon"


# --- the placeholder rows --------------------------------------------------------------------------------------


class SplicedEmbedding(nn.Module):
    """The frozen token embedding, with ids >= `first_id` looked up in a separate float32 `learned` table."""

    def __init__(self, base: nn.Embedding, learned: torch.Tensor, first_id: int):
        super().__init__()
        self.base = base  # registered first, so `text_encoder.dtype` still reports the frozen weights' dtype
        self.learned = nn.Parameter(learned.to(torch.float32))
        self.first_id = first_id
        self.embedding_dim = base.embedding_dim

    @property
    def weight(self) -> torch.Tensor:  # some callers read `.weight` (dims, dtype, device)
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        new = ids >= self.first_id
        out = self.base(torch.where(new, torch.zeros_like(ids), ids))
        rows = self.learned[(ids - self.first_id).clamp(min=0)]
        return torch.where(new.unsqueeze(-1), rows.to(out.dtype), out)


def replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` wherever `old` sits inside `root`. (transformers 5's `set_input_embeddings` on CLIPTextModel sets an
    attribute the forward pass never reads, so the swap is done by identity here.)"""
    places = [(m, name) for m in root.modules() for name, child in m.named_children() if child is old and m is not new]
    if not places:
        raise ModelError("cannot find the token-embedding table in this text encoder")
    for module, name in places:
        setattr(module, name, new)


def internal_token_names(index: int, n: int) -> list[str]:
    """The tokenizer words placeholder number `index` trains as. Placeholders are swapped for these in every prompt,
    because a placeholder such as `*` is already in CLIP's byte vocabulary and cannot be added as a new token."""
    return [f"<textinv-{index}-{k}>" for k in range(n)]


def add_new_tokens(tokenizer, names: list[str], first_id: int) -> list[int]:
    """Add `names` to the tokenizer and check that each became one new id at or after `first_id`."""
    tokenizer.add_tokens(names)
    ids = tokenizer(" ".join(names), add_special_tokens=False).input_ids
    if len(ids) != len(names) or min(ids) < first_id or len(set(ids)) != len(ids):
        raise ModelError(f"this tokenizer cannot take new tokens {names} as single words; textinv cannot train it")
    return ids


def init_vectors(tokenizer, table: torch.Tensor, word: str, n: int) -> tuple[torch.Tensor, list[str]]:
    """Vectors for one placeholder from its init word's token embeddings, spread over `n` vectors in turn."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ConfigError(f"init word {word!r} gives no tokens; pass a plain word such as cat")
    pieces = tokenizer.convert_ids_to_tokens(ids)
    # as AUTOMATIC1111: vector i takes token i*len/n, so 2 tokens over 4 vectors -> a a b b
    rows = [ids[i * len(ids) // n] for i in range(n)]
    return table[rows].detach().to(torch.float32).clone(), pieces


# --- the pieces the loop needs, each built once -----------------------------------------------------------------


class EpochSampler:
    """Item order: every item `repeats` times per epoch, shuffled by the run's generator; its state checkpoints."""

    def __init__(self, n_items: int, repeats: int, generator: torch.Generator):
        self.n, self.repeats, self.g = n_items, repeats, generator
        self.order: list[int] = []
        self.pos = 0

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            if self.pos >= len(self.order):
                self.order = (torch.randperm(self.n * self.repeats, generator=self.g) % self.n).tolist()
                self.pos = 0
            out.append(self.order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"order": list(self.order), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order, self.pos = list(state["order"]), int(state["pos"])


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
    """The autocast dtype for the frozen modules, or None for plain float32."""
    if mixed_precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if mixed_precision == "no":
        return None
    if mixed_precision == "fp16" and device.type == "cpu":
        raise ConfigError("mixed_precision fp16 needs a GPU; on the CPU use bf16 or no")
    return torch.float16 if mixed_precision == "fp16" else torch.bfloat16


@dataclass
class Item:
    """One training image: index into the latent cache and its tokenized prompts."""

    image: int
    prompts: list[str]


def expand_placeholders(text: str, expansions: dict[str, str]) -> str:
    """Replace each placeholder (as a whole word) by all of its vector tokens: `*` -> `* *_1 *_2`."""
    if not expansions:
        return text
    pattern = "|".join(re.escape(p) for p in sorted(expansions, key=len, reverse=True))
    return re.sub(rf"(?<!\S)({pattern})(?=[\s,.;:!?]|$)", lambda m: expansions[m.group(1)], text)


def build_items(cfg: Config, reporter: Reporter) -> tuple[list[data_mod.TrainImage], list[Item]]:
    """Read the image folders and work out each image's prompts (templates, or its caption)."""
    p = cfg.personalization
    paths = cfg.data.paths
    if not paths:
        raise DataError("no image folder given; pass one: textinv train ./my_cat --init-word cat")
    if len(paths) not in (1, len(p.placeholder_strings)):
        raise ConfigError(
            f"{len(paths)} image folders for {len(p.placeholder_strings)} placeholders; pass one folder per "
            "placeholder, in the same order, or one folder with caption files"
        )
    templates = data_mod.load_templates(p.learnable_property)
    images: list[data_mod.TrainImage] = []
    items: list[Item] = []
    for j, folder in enumerate(paths):
        found, warnings = data_mod.load_folder(folder, cfg.data.resolution, center_crop=cfg.data.center_crop)
        for w in warnings:
            reporter.message(f"warning: {w}")
        own = p.placeholder_strings[j] if len(paths) > 1 or len(p.placeholder_strings) == 1 else None
        for img in found:
            if img.caption:
                prompt = data_mod.fill_prompt(img.caption, own or p.placeholder_strings[0])
                if not any(re.search(rf"(?<!\S){re.escape(s)}(?=[\s,.;:!?]|$)", prompt) for s in p.placeholder_strings):
                    raise DataError(
                        f"caption {img.path.with_suffix('.txt').name} does not mention the placeholder; write * or "
                        f"[name] where it goes, e.g. 'a photo of * on a sofa'"
                    )
                prompts = [prompt]
            elif own is None:
                raise DataError(
                    f"{img.path.name} has no caption file, and with {len(p.placeholder_strings)} placeholders in one "
                    "folder textinv cannot tell which it shows; pass one folder per placeholder"
                )
            else:
                prompts = [data_mod.fill_prompt(t, own) for t in templates]
            items.append(Item(image=len(images), prompts=prompts))
            images.append(img)
    return images, items


@dataclass
class Batches:
    """Draws a training micro-batch: items in epoch order, a flip each, a latent sampled from the cached
    distribution, noise, timesteps and a prompt each; every draw from the run's one generator."""

    items: list[Item]
    prompt_ids: list[torch.Tensor]  # per item: [n_prompts, 77] on device
    latent_mean: torch.Tensor  # [n_images, 2 (flip), C, h, w] on device
    latent_std: torch.Tensor
    scaling: float
    alphas_cumprod: torch.Tensor
    prediction: str
    flip_p: float
    sampler: EpochSampler
    generator: torch.Generator
    device: torch.device

    def __post_init__(self) -> None:
        a = self.alphas_cumprod.to(device=self.device, dtype=torch.float32)
        self.sqrt_a, self.sqrt_1ma = a.sqrt(), (1 - a).sqrt()

    def draw(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy latents, timesteps, prompt ids, target): target is the noise, or v for v-prediction models."""
        g, dev = self.generator, self.device
        idx = self.sampler.take(batch)
        flips = (torch.rand(batch, generator=g) < self.flip_p).long()
        img = torch.tensor([self.items[i].image for i in idx])
        mean, std = self.latent_mean[img, flips], self.latent_std[img, flips]
        latents = (mean + std * torch.randn(mean.shape, generator=g).to(dev)) * self.scaling
        noise = torch.randn(latents.shape, generator=g).to(dev)
        t = torch.randint(0, len(self.sqrt_a), (batch,), generator=g).to(dev)
        choice = [int(torch.randint(0, len(self.items[i].prompts), (1,), generator=g)) for i in idx]
        ids = torch.stack([self.prompt_ids[i][c] for i, c in zip(idx, choice, strict=True)])
        a, b = self.sqrt_a[t].view(-1, 1, 1, 1), self.sqrt_1ma[t].view(-1, 1, 1, 1)
        target = noise if self.prediction == "epsilon" else a * noise - b * latents
        return a * latents + b * noise, t, ids, target


# --- the run --------------------------------------------------------------------------------------------------


class _Distributed:
    """Data parallel under `accelerate launch` (or torchrun): averaged gradients, rank 0 writes the files."""

    def __init__(self) -> None:
        # `accelerate launch` (multi-GPU) and torchrun both set these; init the process group from them directly, so
        # that CPU processes (gloo) work too, which accelerate's PartialState treats as one process.
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device: torch.device | None = None
        if self.world > 1:
            import torch.distributed as td

            if not td.is_initialized():
                td.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            self.rank, self.world = td.get_rank(), td.get_world_size()
            if torch.cuda.is_available():
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean_(self, t: torch.Tensor) -> None:
        if self.world > 1:
            torch.distributed.all_reduce(t)
            t /= self.world

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


@contextlib.contextmanager
def _ctrl_c() -> Iterator[threading.Event]:
    """The first Ctrl-C asks the loop to stop at the end of the step; a second one interrupts at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def compute_loss(unet, text_encoder, noisy, timesteps, ids, target, autocast_dtype, device) -> torch.Tensor:
    """One forward pass: text encoder (with the spliced rows), UNet, MSE against the target in float32."""
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        hidden = text_encoder(ids)[0]
        pred = unet(noisy, timesteps, hidden).sample
    return F.mse_loss(pred.float(), target.float())


def train(cfg: Config, *, reporter: Reporter | None = None, resume: str | Path | None = None) -> RunResult:
    """Train the placeholder embeddings described by `cfg` (already validated); `resume` continues a run folder."""
    dist = _Distributed()
    reporter = (reporter or Reporter()) if dist.main else Reporter()  # one process reports
    device = dist.device or models.resolve_device(cfg.train.device)
    autocast_dtype = resolve_precision(cfg.train.mixed_precision, device)
    p = cfg.personalization
    images, items = build_items(cfg, reporter)

    pipe = _load_frozen(cfg, device)
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae

    base = text_encoder.get_input_embeddings()
    first_id = len(tokenizer)
    if first_id > base.num_embeddings:
        raise ModelError(f"tokenizer ({first_id} tokens) is larger than the text encoder's table ({base.num_embeddings})")
    vectors, expansions = add_placeholders(tokenizer, base.weight, p, first_id, reporter)
    # the VAE stays float32: it runs once here (and for image logs), where fp16 VAEs are known to overflow
    latent_mean, latent_std = _cache_latents(vae, images, device)
    if autocast_dtype is not None:  # cast the frozen weights once rather than on every op of every step
        text_encoder.to(autocast_dtype)
        unet.to(autocast_dtype)
    spliced = SplicedEmbedding(base, vectors.to(device), first_id)  # float32 whatever the precision
    replace_module(text_encoder, base, spliced)
    learned = spliced.learned

    prompt_ids = [
        tokenizer([expand_placeholders(s, expansions) for s in it.prompts], padding="max_length",
                  max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids.to(device)
        for it in items
    ]
    from diffusers import DDPMScheduler

    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction = cfg.model.prediction_type or noise_sched.config.prediction_type
    if prediction not in ("epsilon", "v_prediction"):
        raise ModelError(f"the model predicts {prediction!r}; textinv trains epsilon and v_prediction models")
    o = cfg.optim
    lr = o.learning_rate * (cfg.data.batch_size * o.gradient_accumulation_steps * dist.world if o.scale_lr else 1)
    optimizer = torch.optim.AdamW([learned], lr=lr, betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_epsilon,
                                  weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(o.lr_scheduler, o.lr_warmup_steps, cfg.train.max_steps))
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
    generator = torch.Generator().manual_seed(cfg.train.seed + dist.rank)
    sampler = EpochSampler(len(items), cfg.data.repeats, generator)
    batches = Batches(items=items, prompt_ids=prompt_ids, latent_mean=latent_mean, latent_std=latent_std,
                      scaling=vae.config.scaling_factor, alphas_cumprod=noise_sched.alphas_cumprod,
                      prediction=prediction, flip_p=cfg.data.flip_p, sampler=sampler, generator=generator,
                      device=device)

    step = 0
    if resume is not None:
        run_dir = Path(resume)
        step = _restore(run_dir, dist, learned, optimizer, scheduler, scaler, generator, sampler)
    else:
        run_dir = None
        if dist.main:
            run_dir = runs.new_run_dir(cfg.log.output_dir, run_name(cfg))
            runs.write_text(run_dir / "config.yaml", config_mod.dump_config(cfg))
        run_dir = Path(dist.broadcast(str(run_dir) if run_dir else None))
    if step >= cfg.train.max_steps:
        raise ConfigError(f"{run_dir} already finished at step {step}; pass a larger --max-steps to train further")

    name = run_name(cfg)
    logger = _Logger(run_dir, cfg, enabled=dist.main)
    last_good = step if resume is not None else None

    def embedding_at(s: int):
        from textinv.embeddings import Embedding, Token

        tokens, n = [], p.num_vectors_per_token
        rows = learned.detach().float().cpu()
        for i, placeholder in enumerate(p.placeholder_strings):
            tokens.append(Token(name=placeholder, vectors=rows[i * n:(i + 1) * n].clone()))
        return Embedding(tokens=tokens, name=name, step=s, base_model=cfg.model.source,
                         init_words=dict(zip(p.placeholder_strings, p.initializer_words, strict=True)),
                         extra={"trained_with": "textinv", "learnable_property": p.learnable_property})

    def checkpoint(s: int) -> None:
        nonlocal last_good
        states = dist.gather((generator.get_state(), sampler.state_dict()))
        if not dist.main:
            return
        from textinv.embeddings import save_embedding

        save_embedding(embedding_at(s), run_dir / "embeddings" / f"{name}-{s}.pt", format="pt", force=True)
        runs.save_state(run_dir, s, {
            "step": s,
            "learned": learned.detach().float().cpu(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": [g for g, _ in states],
            "sampler": [smp for _, smp in states],
            "scaler": scaler.state_dict() if scaler is not None else None,
        })
        last_good = s

    def sample_images(s: int) -> None:
        if dist.main:
            _log_images(pipe, run_dir, cfg, s, images, items, latent_mean, vae.config.scaling_factor, expansions,
                        autocast_dtype, device)
            logger.plot()

    # textinv.validation hook (1/2): validation loss, prompts, checkpoint scores, early stop
    from textinv.validation import Validation

    validation = Validation(cfg, run_dir, batches, pipe=pipe, expansions=expansions, embedding_at=embedding_at,
                            forward=lambda *d: compute_loss(unet, text_encoder, *d, autocast_dtype, device),
                            reporter=reporter, autocast_dtype=autocast_dtype, enabled=dist.main, start_step=step)

    verb = "resuming" if step else "training"
    reporter.start("train", cfg.train.max_steps, done=step,
                   note=f"{verb} in {run_dir} from step {step} to {cfg.train.max_steps}")
    losses: list[float] = []
    batch = cfg.data.batch_size
    accum = o.gradient_accumulation_steps
    try:
        with _ctrl_c() as stop:
            while step < cfg.train.max_steps:
                total = torch.zeros((), device=device)
                for _ in range(accum):
                    noisy, t, ids, target = batches.draw(batch)
                    loss = compute_loss(unet, text_encoder, noisy, t, ids, target, autocast_dtype, device) / accum
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                    total += loss.detach()
                dist.mean_(total)
                value = float(total)
                if not math.isfinite(value):
                    kept = (f"the last good checkpoint is {run_dir / 'embeddings' / f'{name}-{last_good}.pt'}"
                            if last_good is not None else "no checkpoint was written yet")
                    raise NonFiniteLoss(
                        f"loss became {value} at step {step + 1}; stopped, {kept}. Lower optim.learning_rate or "
                        "use --set train.mixed_precision=no"
                    )
                dist.mean_(learned.grad)
                current_lr = _update(optimizer, scheduler, scaler, learned, o.max_grad_norm)
                step += 1
                losses.append(value)
                logger.log(step, value, current_lr)
                reporter.advance("train", step, loss=value, lr=current_lr)
                if cfg.log.save_every and step % cfg.log.save_every == 0 and step < cfg.train.max_steps:
                    checkpoint(step)
                if cfg.log.image_every and step % cfg.log.image_every == 0:
                    sample_images(step)
                if validation.after_step(step):  # textinv.validation hook (2/2): early stop
                    break
                if stop.is_set() and step < cfg.train.max_steps:
                    checkpoint(step)
                    raise TrainingInterrupted(run_dir, step, saved=True)
    except KeyboardInterrupt:  # a second Ctrl-C, mid-step: the last checkpoint stands
        raise TrainingInterrupted(run_dir, last_good, saved=False) from None
    finally:
        logger.close()
        reporter.finish("train")

    checkpoint(step)
    files = []
    if dist.main:
        from textinv.embeddings import save_embedding, with_extension

        final = embedding_at(step)
        for fmt in cfg.log.formats:  # a format or a tool (`--for`); two naming the same file write it once
            path = with_extension(final, run_dir / "embeddings" / name, format=fmt)
            if path not in files:
                files.append(save_embedding(final, path, format=fmt, force=True))
        if cfg.log.image_every and step % cfg.log.image_every:
            sample_images(step)
        logger.plot()
    replace_module(text_encoder, spliced, base)
    return RunResult(run_dir=run_dir, step=step, embedding_path=run_dir / "embeddings" / f"{name}.pt", files=files,
                     losses=losses, prediction_type=prediction)


def _load_frozen(cfg: Config, device: torch.device):
    """The float32 pipeline with every module frozen (no weight gradients) and SDPA attention."""
    pipe = models.load_pipeline(cfg.model.source, device=device, dtype=torch.float32)
    for module in (pipe.text_encoder, pipe.unet, pipe.vae):
        module.requires_grad_(False)
        module.eval()
    _check_resolution(cfg.data.resolution, pipe.unet, pipe.vae)
    with contextlib.suppress(Exception):  # SDPA is diffusers' default where torch has it; make sure
        pipe.unet.set_default_attn_processor()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _restore(run_dir: Path, dist, learned, optimizer, scheduler, scaler, generator, sampler) -> int:
    """Load the run's latest state into the training objects; returns its step."""
    step, state_path = runs.latest_state(run_dir)
    state = runs.load_state(state_path)
    if len(state["rng"]) != dist.world:
        raise ConfigError(f"{run_dir} was trained by {len(state['rng'])} process(es); resume it with as many "
                          f"(this is {dist.world})")
    learned.data.copy_(state["learned"].to(learned.device))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["rng"][dist.rank])
    sampler.load_state_dict(state["sampler"][dist.rank])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if dist.main:
        runs.truncate_csv(run_dir / "loss.csv", step)
    return step


def _update(optimizer, scheduler, scaler, learned: torch.Tensor, max_grad_norm: float) -> float:
    """One optimizer step on the (already averaged) gradient; returns the learning rate it used."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([learned], max_grad_norm)
    lr = optimizer.param_groups[0]["lr"]
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return lr


def add_placeholders(tokenizer, table: torch.Tensor, p, first_id: int, reporter: Reporter):
    """Add each placeholder's tokens to the tokenizer. Returns the initial vectors [n_total, dim] and, for each
    placeholder, the token text that stands for it in prompts."""
    vectors = []
    expansions: dict[str, str] = {}
    for i, (placeholder, word) in enumerate(zip(p.placeholder_strings, p.initializer_words, strict=True)):
        if placeholder.isalnum() and len(tokenizer(placeholder, add_special_tokens=False).input_ids) == 1:
            raise ConfigError(f"placeholder {placeholder!r} is a word the model already knows; pick a new one, "
                              f"e.g. '<{placeholder}>'")
        names = internal_token_names(i, p.num_vectors_per_token)
        add_new_tokens(tokenizer, names, first_id)
        vecs, pieces = init_vectors(tokenizer, table, word, p.num_vectors_per_token)
        if len(pieces) > 1:
            used = min(len(pieces), p.num_vectors_per_token)
            reporter.message(
                f"init word {word!r} is {len(pieces)} tokens ({' '.join(x.removesuffix('</w>') for x in pieces)}); "
                f"{used} of them initialise the {p.num_vectors_per_token} vector(s) of {placeholder!r} in turn"
                + ("" if used == len(pieces) else "; raise num_vectors_per_token to use them all")
            )
        vectors.append(vecs)
        expansions[placeholder] = " ".join(names)
    return torch.cat(vectors), expansions


def run_name(cfg: Config) -> str:
    if cfg.log.name:
        return cfg.log.name
    first = Path(cfg.data.paths[0]).resolve().name if cfg.data.paths else "run"
    return re.sub(r"[^\w.-]+", "_", first) or "run"


def _check_resolution(resolution: int, unet, vae) -> None:
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet_factor = 2 ** (len(unet.config.block_out_channels) - 1)
    if resolution % (vae_factor * unet_factor):
        raise ConfigError(
            f"resolution {resolution} does not fit this model: it must be a multiple of {vae_factor * unet_factor}"
        )


@torch.no_grad()
def _cache_latents(vae, images: list[data_mod.TrainImage], device: torch.device):
    """Latent mean and std of every image and its mirror, once: [N, 2, C, h, w] each, float32, on `device`."""
    means, stds = [], []
    for img in images:
        pixels = torch.stack([img.pixels, img.pixels.flip(-1)]).to(device=device, dtype=vae.dtype)
        dist = vae.encode(pixels).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.stack(means), torch.stack(stds)


class _Logger:
    """loss.csv (appended each step), loss.png, and TensorBoard scalars."""

    def __init__(self, run_dir: Path, cfg: Config, enabled: bool):
        self.run_dir, self.enabled = run_dir, enabled
        self.csv = None
        self.tb = None
        if not enabled:
            return
        path = run_dir / "loss.csv"
        new = not path.is_file()
        self.csv = open(path, "a")  # noqa: SIM115 - closed in close()
        if new:
            self.csv.write("step,loss,lr\n")
        if cfg.log.report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, loss: float, lr: float) -> None:
        if self.csv is None:
            return
        self.csv.write(f"{step},{loss:.6g},{lr:.6g}\n")
        self.csv.flush()
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loss, step)
            self.tb.add_scalar("train/lr", lr, step)

    def plot(self) -> None:
        if self.enabled:
            plot_losses(self.run_dir / "loss.csv", self.run_dir / "loss.png")

    def close(self) -> None:
        if self.csv is not None:
            self.csv.close()
            self.csv = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def plot_losses(csv_path: Path, png_path: Path) -> bool:
    """Loss per step and its running mean; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps, losses = [], []
    for line in csv_path.read_text().splitlines()[1:]:
        parts = line.split(",")
        with contextlib.suppress(ValueError, IndexError):
            steps.append(int(parts[0]))
            losses.append(float(parts[1]))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, lw=0.6, alpha=0.5, label="loss")
    if len(losses) >= 2:
        k = max(1, len(losses) // 20)
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


@torch.no_grad()
def _log_images(pipe, run_dir, cfg, step, images, items, latent_mean, scaling, expansions, autocast_dtype, device):
    """The paper code's image log: conditioning, inputs, reconstruction, samples, samples_scaled, and init_word."""
    from PIL import Image

    k = min(cfg.log.num_images, len(items))
    res = cfg.data.resolution
    out = run_dir / "images"

    def save(key: str, pics: list[Image.Image]) -> None:
        with atomic_path(out / f"{key}_gs-{step:06d}.png") as tmp:
            _grid(pics).save(tmp, format="PNG")

    save("conditioning", [_text_image(items[i].prompts[0], res) for i in range(k)])
    save("inputs", [_to_pil(images[items[i].image].pixels) for i in range(k)])
    vae = pipe.vae
    z = latent_mean[[items[i].image for i in range(k)], 0].to(vae.dtype)
    save("reconstruction", [_to_pil(x) for x in vae.decode(z).sample.float().cpu()])
    p = cfg.personalization
    placeholder_prompt = expand_placeholders(
        data_mod.fill_prompt(data_mod.load_templates(p.learnable_property)[0], p.placeholder_strings[0]), expansions)
    init_prompt = data_mod.fill_prompt(data_mod.load_templates(p.learnable_property)[0], p.initializer_words[0])
    common = {"num_inference_steps": cfg.log.sample_steps, "height": res, "width": res,
              "num_images_per_prompt": k}
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        for key, prompt, scale in (("samples", placeholder_prompt, 1.0),
                                   ("samples_scaled", placeholder_prompt, cfg.log.guidance_scale),
                                   ("init_word", init_prompt, cfg.log.guidance_scale)):
            g = torch.Generator(device="cpu").manual_seed(cfg.train.seed)
            pics = pipe(prompt, guidance_scale=scale, generator=g, **common).images
            save(key, pics)


def _to_pil(x: torch.Tensor):
    from PIL import Image

    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def _text_image(text: str, size: int):
    """The prompt drawn as a picture, as the paper code's `conditioning` log does."""
    import textwrap

    from PIL import Image, ImageDraw

    side = max(size, 128)
    img = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(img)
    draw.multiline_text((4, 4), "\n".join(textwrap.wrap(text, width=max(10, side // 7))), fill="black")
    return img.resize((size, size)) if side != size else img


def _grid(pics: list) -> Any:
    from PIL import Image

    w, h = pics[0].size
    grid = Image.new("RGB", (w * len(pics), h), "white")
    for i, pic in enumerate(pics):
        grid.paste(pic.convert("RGB").resize((w, h)), (i * w, 0))
    return grid
