"""What `train()` builds before its first step, one named piece each, from the config section it needs: the
process group, the device and precision, the frozen model with the placeholders spliced in, the batches, the
optimizer and the trackers."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from textinv.atomic import check_writable
from textinv.errors import ConfigError, ModelError, UsageError
from textinv.formats.families import family_for
from textinv.models import peek
from textinv.models.conditioning import Conditioning, conditioning_for, is_sdxl
from textinv.models.loading import load_pipeline, model_family, resolve_device
from textinv.models.tokens import SplicedEmbedding, add_placeholders, expand_placeholders, replace_module
from textinv.pictures import TrainImage, check_image_folder
from textinv.reporting import Reporter
from textinv.runs import Run
from textinv.training import data
from textinv.training.levers import Levers
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
    dims = peek.check_model(cfg.model.source, cfg.model.config)
    if dims is not None:
        peek.check_config(cfg.model.family, dims[1] is not None, family_for(*dims),
                          len(cfg.personalization.placeholder_strings))


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


def load_frozen(model_cfg, resolution: int, gradient_checkpointing: bool, device: torch.device):
    """The float32 pipeline with every module frozen (no weight gradients), on diffusers' default SDPA attention
    (`set_default_attn_processor` would switch SDPA off), with gradient checkpointing in the UNet if asked."""
    pipe = load_pipeline(model_cfg.source, model_config=model_cfg.config, device=device, dtype=torch.float32)
    for module in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None), pipe.unet, pipe.vae):
        if module is None:  # [conditioning] only SDXL has text_encoder_2
            continue
        module.requires_grad_(False)
        module.eval()
    _check_resolution(resolution, pipe.unet, pipe.vae)
    if gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
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
    noise_scheduler: Any
    prediction: str
    precision: torch.dtype | None
    device: torch.device
    resolution: int

    @property
    def sdxl(self) -> bool:
        return is_sdxl(self.pipe)

    def unsplice(self) -> None:
        """Put the frozen token tables back (the pipeline is the caller's again)."""
        for (_, text_encoder), base, spliced in zip(self.condition.encoders, self.bases, self.splices, strict=True):
            replace_module(text_encoder, spliced, base)


def prepare_model(model_cfg, p, resolution: int, gradient_checkpointing: bool, device: torch.device,
                  precision: torch.dtype | None, reporter: Reporter) -> TrainingModel:
    """Load the model, check the config fits it, add the placeholders (`p`: the personalization config) and
    splice one float32 Parameter of their rows into every text encoder."""
    from diffusers import DDPMScheduler

    pipe = load_frozen(model_cfg, resolution, gradient_checkpointing, device)
    # [conditioning] one text encoder, or SDXL's two (textinv/models/conditioning.py); the config must fit the model
    condition = conditioning_for(pipe, resolution)
    peek.check_config(model_cfg.family, is_sdxl(pipe), model_family(pipe), len(p.placeholder_strings))
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
    if precision is not None:  # cast the frozen weights once rather than on every op of every step
        for _, text_encoder in condition.encoders:
            text_encoder.to(precision)
        pipe.unet.to(precision)  # the VAE stays float32: fp16 VAEs are known to overflow
    # [conditioning] one float32 Parameter whatever the precision; each encoder's splice reads its columns of it
    learned = nn.Parameter(torch.cat(vectors, dim=1).to(device))
    splices = [SplicedEmbedding(base, learned, first_id, columns)
               for base, first_id, columns in zip(bases, first_ids, condition.columns(), strict=True)]
    for (_, text_encoder), base, spliced in zip(condition.encoders, bases, splices, strict=True):
        replace_module(text_encoder, base, spliced)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction = model_cfg.prediction_type or noise_scheduler.config.prediction_type
    if prediction not in ("epsilon", "v_prediction"):
        raise ModelError(f"the model predicts {prediction!r}; textinv trains epsilon and v_prediction models")
    noise_scheduler.register_to_config(prediction_type=prediction)
    return TrainingModel(pipe=pipe, condition=condition, learned=learned, expansions=expansions, bases=bases,
                         splices=splices, noise_scheduler=noise_scheduler, prediction=prediction,
                         precision=precision, device=device, resolution=resolution)


def make_batches(model: TrainingModel, images: list[TrainImage], items: list[data.Item], data_cfg, seed: int,
                 rank: int, world: int) -> data.Batches:
    """The training draws: every random one from a generator seeded by `seed`, the same on every process (see
    data.Batches); the VAE encodes each (image, flip) once, when first drawn; the pictures' masks at latent size
    when `data.masks`."""
    prompt_ids = [model.condition.tokenize([expand_placeholders(s, model.expansions) for s in it.prompts])
                  .to(model.device) for it in items]
    generator = torch.Generator().manual_seed(seed)
    cache = data.cache_latents(model.pipe.vae, images, model.device)
    masks = data.latent_masks(images, cache.mean.shape[-1], model.device) if data_cfg.masks else None
    return data.Batches(items=items, prompt_ids=prompt_ids, cache=cache,
                        scaling=model.pipe.vae.config.scaling_factor, noise_scheduler=model.noise_scheduler,
                        prediction=model.prediction, flip_p=data_cfg.flip_p,
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
    levers = Levers.from_config(o, model.learned, model.condition.columns(), [b.weight for b in model.bases])
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


def final_formats(formats: list[str], sdxl: bool) -> list[str]:
    """[conditioning] an SDXL .pt holds {clip_l, clip_g} and nothing else: the .safetensors, which also keeps the
    placeholder and the metadata, is the run's embedding."""
    return list(dict.fromkeys(["safetensors", *formats])) if sdxl else formats


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


def _check_resolution(resolution: int, unet, vae) -> None:
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet_factor = 2 ** (len(unet.config.block_out_channels) - 1)
    if resolution % (vae_factor * unet_factor):
        raise ConfigError(
            f"resolution {resolution} does not fit this model: it must be a multiple of {vae_factor * unet_factor}"
        )
