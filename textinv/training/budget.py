"""`train.max_memory`: the fastest settings whose estimated peak fits a memory budget.

Each way of saving memory costs something, so they are tried in order of cost (measured on the CPU, README
"Training speed"), each added to the ones before, and the first whose estimate fits is used:

1. the settings as configured;
2. offload: every latent is encoded first, before the other weights are cast or moved to the device, then the VAE
   leaves the device (the first step starts later by those encodes; image logs bring the VAE back);
3. frozen weights in bf16 (only where `train.mixed_precision` is `auto`, and on a GPU it already is): half the
   bytes of the text encoders and the UNet, and of the activations; the loss moves within bf16's rounding;
4. gradient checkpointing: the UNet keeps only its blocks' inputs and recomputes the rest in the backward pass
   (a slower step, the same loss).

The estimate: the memory in use before the model loads (on the CPU: libraries and training images), plus the larger
of the weights in their dtypes with one training step's activations, and one VAE encode (with the other weights
beside it, unless offload encodes first). The activations are counted by
running the UNet once on the meta device (no memory, no arithmetic) and adding up what autograd keeps for the
backward pass, with PyTorch's flash attention (which keeps no attention matrix), as on the real run. A budget that
even the leanest settings exceed is refused with the estimate's parts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from textinv.errors import ConfigError

GIB = 2**30
MARGIN = 1.15  # the backward pass's own gradients and workspace on top of the kept activations (measured: 1.09x)
CUDA_CONTEXT = 0  # the budget on a GPU is torch's allocator peak; the CUDA context comes on top of it


@dataclass(frozen=True)
class Settings:
    """The memory-relevant settings of a run."""

    precision: torch.dtype | None  # the frozen text encoders' and UNet's dtype (None: float32)
    offload: bool  # the VAE off the device once the latents are cached
    checkpointing: bool  # gradient checkpointing in the UNet

    def describe(self) -> str:
        dtype = {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.precision]
        return (f"frozen weights in {dtype}, VAE {'offloaded once the latents are cached' if self.offload else 'kept'}"
                f", gradient checkpointing {'on' if self.checkpointing else 'off'}")


@dataclass
class Estimate:
    """Bytes of each part of the estimated peak."""

    before: int  # in use before the model loads
    weights: int  # during the steps
    activations: int
    encode: int  # one VAE encode's working memory, and the VAE's own weights when it is offloaded
    encode_first: bool = False  # offload: every latent is encoded before the other weights are cast or moved

    @property
    def peak(self) -> int:
        return self.before + max(self.weights + self.activations,
                                 self.encode + (0 if self.encode_first else self.weights))

    def describe(self) -> str:
        return (f"{self.peak / GIB:.1f} GiB: {self.before / GIB:.1f} in use before loading, weights "
                f"{self.weights / GIB:.1f}, activations {self.activations / GIB:.1f}, a VAE encode "
                f"{self.encode / GIB:.1f}{' (before the other weights load)' if self.encode_first else ''}")


def candidates(wanted: Settings, may_cast: bool, low_precision: torch.dtype) -> list[Settings]:
    """The settings to try, cheapest first; each keeps what the ones before it turned on."""
    out = [wanted]
    out.append(dataclasses.replace(out[-1], offload=True))
    if may_cast and out[-1].precision is None:
        out.append(dataclasses.replace(out[-1], precision=low_precision))
    out.append(dataclasses.replace(out[-1], checkpointing=True))
    return list(dict.fromkeys(out))


def choose(budget_gib: float, wanted: Settings, may_cast: bool, estimate) -> tuple[Settings, Estimate]:
    """The first of `candidates` whose `estimate(settings)` fits `budget_gib`, or a ConfigError naming the parts
    of the leanest one's estimate."""
    tried = [(s, estimate(s)) for s in candidates(wanted, may_cast, torch.bfloat16)]
    for settings, est in tried:
        if est.peak <= budget_gib * GIB:
            return settings, est
    settings, est = tried[-1]
    raise ConfigError(f"train.max_memory is {budget_gib:g} GiB, but even the leanest settings ({settings.describe()}) "
                      f"are estimated at {est.describe()}; raise train.max_memory, or lower data.resolution or "
                      "data.batch_size")


def estimate(pipe, settings: Settings, resolution: int, batch: int, before: int, device: torch.device) -> Estimate:
    """The estimated peak of a run of `pipe` (loaded, not yet cast) with `settings`."""
    low = settings.precision or torch.float32
    frozen = [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None), pipe.unet) if m is not None]
    weights = sum(module_bytes(m, low) for m in frozen)
    vae = module_bytes(pipe.vae, torch.float32)
    encode = vae + encode_bytes(pipe.vae, resolution)
    side = resolution // 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    acts = int(MARGIN * step_activations(pipe.unet, batch, side, low, settings.checkpointing))
    return Estimate(before=before, weights=weights + (0 if settings.offload else vae), activations=acts,
                    encode=encode if settings.offload else encode - vae, encode_first=settings.offload)


def module_bytes(module, dtype: torch.dtype) -> int:
    """The bytes of `module`'s parameters and buffers with its floating ones in `dtype`."""
    size = torch.empty((), dtype=dtype).element_size()
    return sum(t.numel() * (size if t.is_floating_point() else t.element_size())
               for t in (*module.parameters(), *module.buffers()))


def encode_bytes(vae, resolution: int) -> int:
    """One float32 VAE encode's working memory: about four feature maps of its first block at full size."""
    return 4 * vae.config.block_out_channels[0] * resolution * resolution * 4


def _flash(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """Scaled-dot-product attention as the flash kernel runs it (its saved tensors are O(tokens), not O(tokens^2))."""
    if attn_mask is not None:
        return _sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal, scale=scale)[0]


_sdpa = F.scaled_dot_product_attention


@contextlib.contextmanager
def _flash_attention():
    F.scaled_dot_product_attention = _flash
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _sdpa


def step_activations(unet, batch: int, side: int, dtype: torch.dtype, checkpointing: bool) -> int:
    """Bytes autograd keeps for the backward pass of one micro-batch of `side` x `side` latents through `unet`, in
    `dtype`, counted in float32 on a copy of it on the meta device. With gradient checkpointing, each unit diffusers
    checkpoints (a ResNet block, a transformer block) keeps only its input, and the backward pass rebuilds one
    unit's activations at a time: the largest one's come on top."""
    config = json.dumps(dict(unet.config), sort_keys=True, default=str)
    total, inside, inputs, largest = _profile(config, batch, side)
    kept = total - inside + inputs + largest if checkpointing else total
    return kept * dtype.itemsize // 4


UNITS = ("ResnetBlock2D", "BasicTransformerBlock")  # what diffusers' gradient checkpointing recomputes, one by one


@functools.lru_cache(maxsize=8)
def _profile(config_json: str, batch: int, side: int) -> tuple[int, int, int, int]:
    """One float32 forward pass on the meta device: (bytes kept for the backward pass, of them those kept inside the
    checkpointed units, the units' inputs, the most one unit keeps)."""
    from diffusers import UNet2DConditionModel

    config = json.loads(config_json)
    with torch.device("meta"):
        ghost = UNet2DConditionModel.from_config(config).requires_grad_(False)
    weights = {t.untyped_storage()._cdata for t in (*ghost.parameters(), *ghost.buffers())}
    kept: dict[int, int] = {}
    units: dict[int, int] = {}
    inputs: list[int] = []
    inside: list[int] = []

    def pack(t):
        key = t.untyped_storage()._cdata
        if key not in weights and key not in kept:
            kept[key] = t.untyped_storage().nbytes()
            if inside:
                units[inside[-1]] = units.get(inside[-1], 0) + kept[key]
        return t

    def enter(mod, args, kwargs):
        first = args[0] if args else next(iter(kwargs.values()))
        inputs.append(first.numel() * first.element_size())
        inside.append(id(mod))

    def leave(mod, args, kwargs, out):
        inside.pop()

    for m in ghost.modules():
        if type(m).__name__ in UNITS:
            m.register_forward_pre_hook(enter, with_kwargs=True)
            m.register_forward_hook(leave, with_kwargs=True)
    with _flash_attention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ghost(torch.zeros(batch, config["in_channels"], side, side, device="meta"),
              torch.zeros(batch, device="meta", dtype=torch.long), **_conditioning(config, batch, torch.float32))
    return sum(kept.values()), sum(units.values()), sum(inputs), max(units.values(), default=0)


def _conditioning(config, batch: int, dtype: torch.dtype) -> dict:
    """Meta stand-ins for the text conditioning of `config`'s UNet (SDXL's added ids and pooled text too)."""
    meta = {"device": "meta", "dtype": dtype}
    # the text conditioning carries the learned rows' gradient, so autograd keeps what its backward pass needs
    kwargs = {"encoder_hidden_states": torch.zeros(batch, 77, config["cross_attention_dim"], **meta,
                                                   requires_grad=True)}
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, pooled, **meta, requires_grad=True),
                                       "time_ids": torch.zeros(batch, 6, **meta)}
    return kwargs
