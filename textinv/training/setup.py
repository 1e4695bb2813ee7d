"""What `train()` builds before its first step, one named piece each, from the config section it needs: the
process group, the device and precision, the frozen model with the placeholders spliced in, the batches, the
optimizer and the trackers."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from textinv.atomic import check_writable
from textinv.errors import ConfigError, ModelError, UsageError
from textinv.formats.families import family_for
from textinv.models import memory, peek
from textinv.models.conditioning import Conditioning, conditioning_for, kind_of
from textinv.models.denoiser import Denoiser, denoiser_for, latent_shift, side_multiple
from textinv.models.loading import load_pipeline, model_family, resolve_device
from textinv.models.tokens import SplicedEmbedding, add_placeholders, expand_placeholders, replace_module
from textinv.pictures import TrainImage, check_image_folder
from textinv.reporting import Reporter
from textinv.runs import Run
from textinv.training import budget, data
from textinv.training.levers import Levers
from textinv.training.objective import DDPM, Objective, flow_matching
from textinv.training.state import Learning

TRACKERS = {"none": [], "tensorboard": ["tensorboard"], "wandb": ["wandb"], "all": ["tensorboard", "wandb"]}


def check_image_folders(data_cfg) -> None:
    """A new run names its image folders (`data.paths`), and each one exists: said before any model loads."""
    if not data_cfg.paths:
        raise UsageError("pass a folder of images: textinv train ./my_cat --init-word cat")
    for d in data_cfg.paths:
        if Path(d).is_file():
            raise UsageError(f"{d} is a file, not a folder; pass the folder that holds the images of the concept")
        if not Path(d).is_dir():
            raise UsageError(f"{d}: no such folder; pass a folder of 3-5 images of the concept")


def check_launch(environ=os.environ) -> None:
    """UsageError when `accelerate launch` was asked for several processes but started only this one: its simple
    launcher (no --multi_gpu on a machine without GPUs) sets MASTER_ADDR for them and starts one process, which
    would train alone, more slowly than asked, and without saying so."""
    launched = "ACCELERATE_MIXED_PRECISION" in environ  # every accelerate launcher sets it
    several = "MASTER_ADDR" in environ  # the simple launcher sets it only for several processes or machines
    started = any(k in environ for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))
    if launched and several and not started:
        raise UsageError(
            "accelerate launch was asked for several processes but started only this one: without GPUs its launcher "
            "starts several only with --multi_gpu (textinv then trains on CPU processes); add --multi_gpu, or drop "
            "--num_processes to train in one process"
        )


def check_before_loading(cfg, *, resume: bool = False) -> None:
    """What the config already shows, each in one line before any model loads (or another library prints): the
    image folders hold images; the model and `model.config` exist and fit each other; the config's family is the
    model's, told from the model's files; a new run's output folder can be written; `accelerate launch` started
    the processes it was asked for."""
    check_launch()
    resolve_device(cfg.train.device)  # a device this machine does not have
    if not resume:
        check_image_folders(cfg.data)
        check_writable(cfg.log.output_dir, "--out")
    for folder in cfg.data.paths:
        check_image_folder(folder)
    check_optim(peek.model_kind(cfg.model.source) in ("sd3", "flux"), cfg.optim)
    dims = peek.check_model(cfg.model.source, cfg.model.config)
    if dims is not None:
        kind = peek.model_kind(cfg.model.source) or ("sdxl" if dims[1] is not None else "sd")
        peek.check_config(cfg.model.family, kind, family_for(*dims), len(cfg.personalization.placeholder_strings))


def check_optim(flow: bool, optim) -> None:
    """The optim options the config alone cannot judge: the edit anchor needs its words, and the options only DDPM
    training takes are refused for a model trained with flow matching (`flow`: SD3, Flux.1): Min-SNR weights DDPM
    timesteps (flow matching has `train.weighting_scheme`), and the edit anchor has been tried on DDPM models only."""
    if optim is None:
        return
    if optim.edit_anchor_weight and (not optim.edit_words or not all(w.strip() for w in optim.edit_words)):
        raise ConfigError("`optim.edit_anchor_weight` needs `optim.edit_words`, the words that must keep working "
                          "before the placeholder, none of them empty: e.g. --set 'optim.edit_words=[red, blue, "
                          "wooden]'")
    if flow and optim.min_snr_gamma:
        raise ConfigError("`optim.min_snr_gamma` weights DDPM training (SD1.x, SD2.x, SDXL); this model trains "
                          "with flow matching, weighted by `train.weighting_scheme`: set min_snr_gamma to 0")
    if flow and optim.edit_anchor_weight:
        raise ConfigError("`optim.edit_anchor_weight` is for DDPM training (SD1.x, SD2.x, SDXL; measured on the toy "
                          "model only); for SD3 and Flux.1 set it to 0")


def make_accelerator(train_cfg):
    """The Accelerator: the process group (gloo on CPUs, NCCL on GPUs) and trackers. Mixed precision and the
    gradient averaging stay in the loop: only one small Parameter learns, so no model is wrapped."""
    from accelerate import Accelerator

    cpu = train_cfg.device == "cpu" or (train_cfg.device == "auto" and not torch.cuda.is_available())
    return Accelerator(cpu=cpu, mixed_precision="no")


def training_device(acc, wanted: str) -> torch.device:
    """This process's device: accelerate's with several processes, else `train.device` resolved."""
    device = torch.device(acc.device.type, acc.device.index) if acc.num_processes > 1 else resolve_device(wanted)
    return torch.device("cpu") if device.type == "cpu" else device


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


def effective_batch(optim, batch_size: int, processes: int) -> tuple[float, str]:
    """(learning rate, a line saying how it and the samples per optimizer step were worked out)."""
    o = optim
    total = batch_size * o.gradient_accumulation_steps * processes
    lr = o.learning_rate * (total if o.scale_lr else 1)
    how = (f"effective batch {total} = {batch_size} per process x {o.gradient_accumulation_steps} accumulation x "
           f"{processes} process(es); learning rate {lr:g}"
           + (f" = {o.learning_rate:g} x {total} (optim.scale_lr)" if o.scale_lr else ""))
    return lr, how


FROZEN_MODULES = ("text_encoder", "text_encoder_2", "text_encoder_3", "unet", "transformer", "vae")


def load_frozen(model_cfg, resolution: int, gradient_checkpointing: bool, device: torch.device,
                dtype: torch.dtype = torch.float32):
    """The pipeline in `dtype` (float32; SD3 and Flux.1 load in the training precision, as their trainers do: a
    float32 Flux.1-dev would be 48 GB) with every module frozen (no weight gradients) and the VAE in float32, on
    diffusers' default SDPA attention (`set_default_attn_processor` would switch SDPA off), with gradient
    checkpointing in the denoiser if asked."""
    pipe = load_pipeline(model_cfg.source, model_config=model_cfg.config, device=device, dtype=dtype)
    for module in (getattr(pipe, name, None) for name in FROZEN_MODULES):
        if module is None:  # [conditioning] SDXL has text_encoder_2, SD3 text_encoder_3, SD3/Flux.1 a transformer
            continue
        module.requires_grad_(False)
        module.eval()
    pipe.vae.to(torch.float32)
    _check_resolution(resolution, pipe)
    if gradient_checkpointing:
        denoiser_for(pipe).module.enable_gradient_checkpointing()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass
class TrainingModel:
    """The frozen pipeline with the placeholders' rows spliced into its text encoder(s): `learned` is the only
    thing that learns. `expansions` writes each placeholder as its vector tokens in prompts."""

    pipe: Any
    condition: Conditioning
    learned: nn.Parameter
    expansions: dict[str, str]
    bases: list[nn.Module]
    splices: list[SplicedEmbedding]
    objective: Objective
    precision: torch.dtype | None
    device: torch.device
    resolution: int
    denoiser: Denoiser | None = None
    offloaded: list[nn.Module] = field(default_factory=list)  # encoders moved to the CPU once their outputs are cached
    parked: memory.Offload | None = None  # [memory] the VAE, off the device once the latents are cached
    settled: bool = False  # [memory] the frozen weights cast and on the device

    @property
    def prediction(self) -> str:
        return self.objective.name

    @property
    def sdxl(self) -> bool:
        return kind_of(self.pipe) == "sdxl"

    def parts(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each encoder's part of learned `rows`, by its key in an embedding file (`Conditioning.keys`)."""
        return dict(zip(self.condition.keys, self.condition.split(rows), strict=True))

    @property
    def multi_encoder(self) -> bool:
        """One part per text encoder in the embedding file (SDXL, SD3, Flux.1)."""
        return len(self.condition.encoders) > 1

    def cache_text(self, ids: torch.Tensor) -> None:
        """Encode once what does not learn (T5, unless it does) for every prompt the run draws (`ids`), then, on a
        GPU, move that encoder to the CPU: the steps read the cache, and image logs bring it back (`on_device`)."""
        self.condition.cache(ids)
        t5 = getattr(self.condition, "t5", None)
        if t5 is not None and not self.condition.trained[-1] and self.device.type == "cuda":
            t5.to("cpu")
            self.offloaded.append(t5)
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def on_device(self) -> Iterator[None]:
        """Every encoder on the device for a pipeline call (an image log), and the offloaded ones back after."""
        for module in self.offloaded:
            module.to(self.device)
        try:
            yield
        finally:
            for module in self.offloaded:
                module.to("cpu")

    def whole(self):
        """[memory] A block in which the parked parts are back on the device (image logs, validation prompts)."""
        return self.parked.back() if self.parked else contextlib.nullcontext()

    def settle(self) -> None:
        """[memory] Cast the frozen text encoder(s) and denoiser (UNet, SD3's or Flux.1's transformer) to the
        training precision, one tensor at a time where they were loaded, and move them to the device (a no-op once
        done). With offload this waits until every latent is cached, so the VAE's encodes never share memory with
        the other weights."""
        if self.settled:
            return
        if self.precision is not None:  # cast the frozen weights once rather than on every op of every step
            for _, text_encoder in self.condition.encoders:
                memory.cast_frozen(text_encoder, self.precision)  # the learned rows stay float32
            memory.cast_frozen(self.denoiser.module, self.precision)  # the VAE stays float32: fp16 VAEs overflow
        for _, text_encoder in self.condition.encoders:
            text_encoder.to(self.device)
        self.denoiser.module.to(self.device)
        self.settled = True

    def unsplice(self) -> None:
        """Put the frozen token tables back (the pipeline is the caller's again)."""
        for (_, text_encoder), base, spliced in zip(self.condition.encoders, self.bases, self.splices, strict=True):
            replace_module(text_encoder, spliced, base)


@dataclass
class MemoryWish:
    """[memory] What the config asks of memory: a budget in GiB (train.max_memory) or none, the VAE offloaded
    (train.offload), whether the frozen weights may be cast (train.mixed_precision auto), the micro-batch."""

    max_memory: float | None = None
    offload: bool = False
    may_cast: bool = False
    batch: int = 1


def memory_wish(cfg) -> MemoryWish:
    """What the budget plans for; the edit anchor keeps the activations of half a batch more for the backward pass
    (loop.EditAnchor), so a budget counts them."""
    batch = cfg.data.batch_size
    extra = max(1, batch // 2) if cfg.optim.edit_anchor_weight else 0
    return MemoryWish(max_memory=cfg.train.max_memory, offload=cfg.train.offload,
                      may_cast=cfg.train.mixed_precision == "auto", batch=batch + extra)


def plan_memory(pipe, wish: MemoryWish, wanted: budget.Settings, resolution: int, before: int,
                device: torch.device, reporter: Reporter) -> budget.Settings:
    """[memory] The settings the run uses: as configured, or the fastest that fit train.max_memory."""
    if wish.max_memory is None:
        return wanted
    settings, est = budget.choose(wish.max_memory, wanted, wish.may_cast, lambda s: budget.estimate(
        pipe, s, resolution, wish.batch, before, device))
    reporter.message(f"memory budget {wish.max_memory:g} GiB: {settings.describe()}; estimated peak "
                     f"{est.describe()}")
    return settings


def prepare_model(model_cfg, p, resolution: int, gradient_checkpointing: bool, device: torch.device,
                  precision: torch.dtype | None, reporter: Reporter, train_cfg=None,
                  memory_wish: MemoryWish | None = None) -> TrainingModel:
    """Load the model, check the config fits it, add the placeholders (`p`: the personalization config) and
    splice one float32 Parameter of their rows into every text encoder that learns (fixed rows into one that does
    not). `train_cfg` (the train config section) picks SD3's and Flux.1's loss weighting and Flux.1's guidance.
    The model loads on the CPU (memory-mapped: nothing is read yet); the frozen text encoder(s) and denoiser are
    cast there one tensor at a time and then moved to `device` (TrainingModel.settle), so neither holds a float32
    copy beside the cast one; with offload (or a budget that chooses it) that waits until make_batches has cached
    every latent."""
    wish = memory_wish or MemoryWish()
    kind = peek.check_config_early(model_cfg.family, model_cfg.source, model_cfg.config, len(p.placeholder_strings))
    if wish.max_memory is not None and kind in ("sd3", "flux"):
        raise ConfigError("`train.max_memory` plans SD1.x, SD2.x and SDXL runs; for SD3 and Flux.1 the packaged "
                          "configs' settings (bf16, gradient checkpointing) are the small-memory ones: drop it")
    weights = precision if precision is not None and kind in ("sd3", "flux") else None
    before = (memory.resident_bytes() or 0) if device.type == "cpu" else 0
    if device.type == "cpu":
        memory.return_freed_memory()
    pipe = load_frozen(model_cfg, resolution, False, torch.device("cpu"), weights or torch.float32)
    settings = plan_memory(pipe, wish, budget.Settings(precision, wish.offload, gradient_checkpointing), resolution,
                           before, device, reporter)
    precision = settings.precision
    denoiser = denoiser_for(pipe, guidance=train_cfg.flux_guidance if train_cfg else 1.0)
    if settings.checkpointing:
        denoiser.module.enable_gradient_checkpointing()
    # [conditioning] one text encoder, SDXL's two, SD3's three or Flux.1's two (textinv/models/conditioning.py);
    # the config must fit the model
    peek.check_config(model_cfg.family, kind_of(pipe), model_family(pipe), len(p.placeholder_strings))
    condition = conditioning_for(pipe, resolution, train_t5=p.train_t5)
    bases, first_ids, vectors = [], [], []
    for k, (tokenizer, text_encoder) in enumerate(condition.encoders):  # a row for each placeholder in each encoder
        base = text_encoder.get_input_embeddings()
        first_id = len(tokenizer)
        if first_id > base.num_embeddings:
            raise ModelError(f"tokenizer ({first_id} tokens) is larger than the text encoder's table "
                             f"({base.num_embeddings})")
        vecs, expansions = add_placeholders(tokenizer, base.weight, p, first_id, reporter if k == 0 else Reporter())
        bases.append(base)
        first_ids.append(first_id)
        vectors.append(vecs)
    pipe.vae.to(device)  # [memory] the rest moves in TrainingModel.settle, after casting
    # [conditioning] one float32 Parameter whatever the precision; each learning encoder's splice reads its columns
    learned = nn.Parameter(torch.cat([v for v, t in zip(vectors, condition.trained, strict=True) if t], 1).to(device))
    condition.frozen = {k: v.to(device) for k, (v, t) in enumerate(zip(vectors, condition.trained, strict=True))
                        if not t}
    splices = [SplicedEmbedding(base, learned if columns is not None else
                                nn.Parameter(condition.frozen[k], requires_grad=False), first_id, columns or slice(None))
               for k, (base, first_id, columns) in enumerate(zip(bases, first_ids, condition.columns(), strict=True))]
    for (_, text_encoder), base, spliced in zip(condition.encoders, bases, splices, strict=True):
        replace_module(text_encoder, base, spliced)
    objective = _objective(pipe, model_cfg, train_cfg, resolution)
    model = TrainingModel(pipe=pipe, condition=condition, learned=learned, expansions=expansions, bases=bases,
                          splices=splices, objective=objective, precision=precision, device=device,
                          resolution=resolution, denoiser=denoiser,
                          parked=memory.Offload(device) if settings.offload else None)
    if not settings.offload:
        model.settle()
    return model


def _objective(pipe, model_cfg, train_cfg, resolution: int) -> Objective:
    """DDPM (epsilon or v, as the model's scheduler or `model.prediction_type` says), or flow matching for SD3 and
    Flux.1 (their schedulers' sigmas, `train.weighting_scheme`)."""
    from diffusers import DDPMScheduler

    if kind_of(pipe) in ("sd3", "flux"):
        if model_cfg.prediction_type is not None:
            raise ConfigError(f"`model.prediction_type` is {model_cfg.prediction_type}, but this model is trained "
                              "with flow matching; leave it null")
        vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        weighting = train_cfg.weighting_scheme if train_cfg else "logit_normal"
        return flow_matching(pipe.scheduler.config, weighting, resolution // vae_factor)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction = model_cfg.prediction_type or noise_scheduler.config.prediction_type
    if prediction not in ("epsilon", "v_prediction"):
        raise ModelError(f"the model predicts {prediction!r}; textinv trains epsilon and v_prediction models")
    noise_scheduler.register_to_config(prediction_type=prediction)
    return DDPM(noise_scheduler, prediction)


def make_batches(model: TrainingModel, images: list[TrainImage], items: list[data.Item], data_cfg, seed: int,
                 rank: int, world: int) -> data.Batches:
    """The training draws: every random one from a generator seeded by `seed`, the same on every process (see
    data.Batches); the VAE encodes each (image, flip) once, when first drawn; the pictures' masks at latent size
    when `data.masks`."""
    prompt_ids = [model.condition.tokenize([expand_placeholders(s, model.expansions) for s in it.prompts])
                  .to(model.device) for it in items]
    generator = torch.Generator().manual_seed(seed)
    cache = data.cache_latents(model.pipe.vae, images, model.device)
    if model.parked is not None:  # [memory] every latent first, then the VAE leaves and the other weights come
        every = range(len(images))
        cache.lookup([i for i in every for _ in (0, 1)], [f for _ in every for f in (0, 1)])
        model.parked.add(model.pipe.vae)
    model.settle()
    model.cache_text(torch.cat(prompt_ids))  # after settle: the encoders are on the device
    masks = data.latent_masks(images, cache.mean.shape[-1], model.device) if data_cfg.masks else None
    return data.Batches(items=items, prompt_ids=prompt_ids, cache=cache,
                        scaling=model.pipe.vae.config.scaling_factor, objective=model.objective,
                        shift=latent_shift(model.pipe.vae), flip_p=data_cfg.flip_p,
                        sampler=data.EpochSampler(len(items), data_cfg.repeats, generator), generator=generator,
                        device=model.device, rank=rank, world=world, masks=masks)


def make_learning(model: TrainingModel, batches: data.Batches, optim, lr: float, max_steps: int) -> Learning:
    """AdamW over the learned rows only (`optim`: the optim config), its learning-rate schedule, (fp16 only)
    the loss scaler, and the levers around the initial rows (training/levers.py)."""
    o = optim
    optimizer = torch.optim.AdamW([model.learned], lr=lr, betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_epsilon,
                                  weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o.lr_scheduler, o.lr_warmup_steps, max_steps))
    scaler = torch.amp.GradScaler(model.device.type, enabled=model.precision == torch.float16)
    learning = [(c, b.weight) for c, b in zip(model.condition.columns(), model.bases, strict=True) if c is not None]
    levers = Levers.from_config(o, model.learned, [c for c, _ in learning], [table for _, table in learning])
    # after every optimizer step that is taken (fp16 skips the steps whose gradient overflowed)
    optimizer.register_step_post_hook(lambda *_: levers.after_step(model.learned))
    return Learning(rows=model.learned, optimizer=optimizer, scheduler=scheduler, scaler=scaler, batches=batches,
                    levers=levers)


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


def final_formats(formats: list[str], multi_encoder: bool) -> list[str]:
    """[conditioning] an SDXL .pt holds {clip_l, clip_g} (SD3: + t5, Flux.1: {clip_l, t5}) and nothing else: the
    .safetensors, which also keeps the placeholder and the metadata, is the run's embedding."""
    return list(dict.fromkeys(["safetensors", *formats])) if multi_encoder else formats


def start_trackers(acc, report_to: str, hparams: dict[str, dict[str, Any]], run: Run) -> bool:
    """Start the `--report-to` trackers (TensorBoard events under <run>/tensorboard/textinv/); False if none.
    `hparams` is the config as a dict of sections."""
    wanted = TRACKERS[report_to]
    if not wanted:
        return False
    from accelerate.tracking import filter_trackers

    acc.project_configuration.set_directories(str(run.tensorboard))
    acc.log_with = filter_trackers(wanted, acc.logging_dir)
    flat = {f"{section}.{k}": v if isinstance(v, (int, float, str, bool)) else str(v)
            for section, values in hparams.items() for k, v in values.items()}
    acc.init_trackers("textinv", config=flat, init_kwargs={"wandb": {"name": run.path.name, "dir": str(run.path)}})
    return True


def _check_resolution(resolution: int, pipe) -> None:
    multiple = side_multiple(pipe)
    if resolution % multiple:
        raise ConfigError(f"resolution {resolution} does not fit this model: it must be a multiple of {multiple}")
