"""Training configuration: typed dataclasses are the schema (`configs/v1-finetune.yaml` shows every key with its
default and a comment; a test keeps the two in step), a YAML file is a diff over them, flags win. Flow:
`load_config(path)` (defaults <- YAML) -> `apply_overrides(cfg, ["optim.learning_rate=1e-3"])` (<- `--set` <- named
flags) -> `validate(cfg)` (before any model loads) -> saved into the run folder by `textinv.runs.Run.create`, read
back for --resume. A YAML file may start from another with `base: FILE` (beside it, or a packaged config's name) and
list only what differs; the paper code's OmegaConf layout is translated by `textinv.paper_config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from textinv import strict_yaml
from textinv.config_bounds import MAX_LEARNING_RATE, MAX_MEMORY_GIB, MAX_SEED, UPPER_BOUNDS, max_batch_size
from textinv.errors import ConfigError
from textinv.formats import SHORTHANDS, TOOLS, WRITE_NAMES
from textinv.formats.families import CONFIG_FOR
from textinv.paper_config import from_paper_layout, is_paper_layout

PACKAGED_CONFIGS = Path(__file__).parent / "configs"


@dataclass
class ModelConfig:
    source: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # hub id, diffusers folder, single file, or `toy`
    prediction_type: str | None = None  # None: whatever the model's scheduler says
    config: str | None = None  # for a .ckpt/.safetensors: a local diffusers folder whose configs describe it
    family: str | None = "SD1.x"  # SD1.x | SD2.x | SDXL | SD3 | Flux.1 | None (any); checked against the model


@dataclass
class PersonalizationConfig:
    placeholder_strings: list[str] = field(default_factory=lambda: ["*"])
    initializer_words: list[str] = field(default_factory=lambda: ["sculpture"])  # the paper code's default
    num_vectors_per_token: int = 1
    learnable_property: str = "object"  # object | style
    train_t5: bool = False  # SD3, Flux.1: the placeholder learns in the T5 encoder too (else its init word's rows)


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)  # image folders; set by `textinv train DIR...`
    resolution: int = 512
    center_crop: bool = True
    flip_p: float = 0.5  # the paper code and the diffusers example both flip half the time
    repeats: int = 100
    batch_size: int = 2  # the paper code's v1-finetune.yaml
    masks: bool = True  # a picture's NAME.mask.png beside it (white: the concept) restricts the loss to the concept


@dataclass
class OptimConfig:
    learning_rate: float = 5.0e-3  # the paper's base rate ...
    scale_lr: bool = True  # ... scaled by the batch, as the paper code does (1e-2 at batch 2)
    lr_scheduler: str = "constant"  # constant | linear | cosine
    lr_warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1.0e-8
    weight_decay: float = 0.01  # torch's AdamW default, which the paper code and diffusers use
    max_grad_norm: float = 0.0  # 0: no clipping
    embedding_reg_weight: float = 0.0  # pull toward the init vectors (the paper code's key); levers: training/levers.py
    norm_control: str = "none"  # none | vocab | cap: after each step, each vector's norm set to (vocab) or capped at
    norm_cap: float = 1.0  # (cap) this many times the vocabulary's median norm (OneTrainer's preserve_embedding_norm)
    max_drift: float = 0.0  # 0: off; else keep each vector within this many vocabulary median norms of its init
    ema_decay: float = 0.0  # 0: off; else also save an EMA of the vectors, <name>-ema.pt (OneTrainer: 0.999)
    min_snr_gamma: float = 0.0  # 0: off; else Min-SNR-gamma loss weighting (invoke-training's default: 5)
    edit_anchor_weight: float = 0.0  # 0: off; else keep `<edit word> *` obeying the edit (loop.EditAnchor)
    edit_words: list[str] = field(default_factory=list)  # the edits to keep, e.g. [red, blue, wooden]


@dataclass
class TrainConfig:
    max_steps: int = 5000  # the paper: ~5000 steps is usually enough
    seed: int = 23  # the paper code's seed
    mixed_precision: str = "auto"  # auto | no | fp16 | bf16; the learned vectors stay float32 regardless
    device: str = "auto"
    gradient_checkpointing: bool = False  # recompute the UNet's activations in the backward pass: less memory
    early_stop: int = 0  # patience, in validation-loss checks; 0: train to max_steps
    weighting_scheme: str = "logit_normal"  # SD3, Flux.1: timestep density / loss weighting (training/objective.py)
    flux_guidance: float = 1.0  # Flux.1-dev's guidance input while training (OneTrainer's default)
    offload: bool = False  # the VAE leaves the device once every latent is cached; image logs bring it back
    max_memory: float | None = None  # a budget in GiB: the fastest memory settings estimated to fit (training/budget.py)


@dataclass
class LogConfig:
    output_dir: str = "logs"
    name: str | None = None
    save_every: int = 500
    image_every: int = 500
    formats: list[str] = field(default_factory=lambda: ["pt"])
    num_images: int = 4
    sample_steps: int = 50
    guidance_scale: float = 5.0  # the paper code's samples_scaled
    report_to: str = "none"  # none | tensorboard | wandb | all
    prompts: list[str] = field(default_factory=list)  # validation prompts, e.g. ["* on a beach"]
    negative_prompt: str = ""
    val_loss_every: int = 100  # a few forward passes on fixed draws: cheap next to 100 training steps
    val_samples: int = 8
    eval_every: int = 0  # off: it generates and scores a grid, slow on a CPU
    eval_clip: str | None = "openai/clip-vit-large-patch14"
    eval_dino: str | None = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    personalization: PersonalizationConfig = field(default_factory=PersonalizationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


CHOICES = {
    "model.prediction_type": (None, "epsilon", "v_prediction"),
    "model.family": (None, *CONFIG_FOR),  # the families with a packaged config
    "personalization.learnable_property": ("object", "style"),
    "optim.lr_scheduler": ("constant", "linear", "cosine"),
    "optim.norm_control": ("none", "vocab", "cap"),
    "train.mixed_precision": ("auto", "no", "fp16", "bf16"),
    "train.weighting_scheme": ("logit_normal", "mode", "none", "sigma_sqrt", "cosmap"),  # diffusers' (objective.py)
    "log.report_to": ("none", "tensorboard", "wandb", "all"),
}
# What `log.formats` takes, as `convert --to` or `--for` do; a picture is no training output.
FORMATS = tuple(f for f in (*SHORTHANDS, *WRITE_NAMES, *TOOLS) if f not in ("png", "a1111-png"))


def all_keys() -> list[str]:
    """Every dotted key the schema knows, e.g. `optim.learning_rate`."""
    return [f"{section}.{f.name}" for section, cls in _SECTIONS.items() for f in dataclasses.fields(cls)]


def _section_fields(section_cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(section_cls)}


# dataclasses.fields() gives string annotations under `from __future__ import annotations`; resolve them once.
_HINTS = {cls: typing.get_type_hints(cls) for cls in (ModelConfig, PersonalizationConfig, DataConfig, OptimConfig,
                                                       TrainConfig, LogConfig, Config)}
_SECTIONS: dict[str, type] = dict(_HINTS[Config])


# Keys users bring from other trainers that textinv has no equivalent for, with what to do instead.
_ABSENT = {
    "optimizer": "textinv trains with AdamW only; its settings are optim.adam_beta1, adam_beta2, adam_epsilon, "
                 "weight_decay",
}


def _suggest(key: str) -> str:
    leaf = key.split(".")[-1]
    if leaf in _ABSENT:
        return f"; {_ABSENT[leaf]}"
    keys = all_keys()
    leaf_matches = [k for k in keys if k.split(".")[1] == leaf]
    close = leaf_matches or difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
    if not close:
        close = difflib.get_close_matches(leaf, [k.split(".")[1] for k in keys], n=1, cutoff=0.75)
        close = [k for k in keys if close and k.endswith("." + close[0])]
    return f"; did you mean `{close[0]}`?" if close else "; see configs/v1-finetune.yaml for every key"


# Keys that hold prompts: a number there is a mistake (`log.prompts: 3` for "three prompts"), not a prompt "3".
_PROSE = ("log.prompts", "log.negative_prompt")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the field's type; ints are accepted for floats and YAML scalars for lists."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"`{key}` must be a list, got {value!r}")
        return [_coerce(key, v, args[0]) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"`{key}` must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"`{key}` must be a whole number, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `5e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"`{key}` must be a number, got {value!r}")
    if hint is str:
        if key in _PROSE and not isinstance(value, str):
            raise ConfigError(f"`{key}` must be text (a prompt, e.g. '* on a beach'), got {value!r}")
        if isinstance(value, bool):  # YAML 1.1 reads `no` (mixed_precision: no) as false
            return ("yes" if value else "no") if key == "train.mixed_precision" else str(value).lower()
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ConfigError(f"`{key}` must be a string, got {value!r}")
    return value


def get_key(cfg: Config, key: str) -> Any:
    """The value of one dotted key, e.g. `optim.learning_rate`."""
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set one dotted key (`optim.learning_rate`), checking that it exists and that the value has its type."""
    parts = key.split(".")
    sections = _SECTIONS
    if len(parts) != 2 or parts[0] not in sections or parts[1] not in _section_fields(sections[parts[0]]):
        raise ConfigError(f"unknown config key `{key}`{_suggest(key)}")
    section_cls = sections[parts[0]]
    hint = _HINTS[section_cls][parts[1]]
    setattr(getattr(cfg, parts[0]), parts[1], _coerce(key, value, hint))


def from_dict(data: dict[str, Any] | None, *, source: str = "config") -> Config:
    """A Config from nested dicts (as read from YAML); unknown keys and wrong types are errors."""
    cfg = Config()
    if data is None:
        return cfg
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of sections (model:, data:, ...), got {type(data).__name__}")
    sections = _SECTIONS
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown config section `{section}`{_suggest(str(section))}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section `{section}` must be a mapping of keys, got {values!r}")
        for key, value in values.items():
            try:
                set_key(cfg, f"{section}.{key}", value)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
    return cfg


def resolve_config_path(path: str | Path) -> Path:
    """A path as given, or the name of a packaged config (`v1-finetune`, `v2-finetune.yaml`)."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (PACKAGED_CONFIGS / p.name, PACKAGED_CONFIGS / f"{p.name}.yaml"):
        if candidate.is_file():
            return candidate
    names = ", ".join(sorted(c.stem for c in PACKAGED_CONFIGS.glob("*.yaml")))
    shown = str(path) if str(path).isprintable() else repr(str(path))  # a base: value may hold a line break
    raise ConfigError(f"config file {shown} not found; pass a YAML file or one of the packaged configs: {names}")


MAX_CONFIG_BYTES = 1 << 20  # a config is a page of text; anything bigger is the wrong file


def load_config(path: str | Path | None = None, *, notes: list[str] | None = None) -> Config:
    """Dataclass defaults, overridden by the YAML file at `path` (a path or a packaged config name).

    Notes for the user (keys of a paper-layout config that have no meaning here) are appended to `notes`."""
    if path is None:
        return Config()
    p = resolve_config_path(path)
    data = _read_yaml(p, seen=())
    if is_paper_layout(data):
        data, ignored = from_paper_layout(data)
        if ignored and notes is not None:
            notes.append(f"{p} is in the paper code's layout; keys with no meaning here were ignored: "
                         + ", ".join(ignored))
    return from_dict(data, source=str(p))


def _read_yaml(p: Path, seen: tuple[Path, ...]) -> Any:
    """The YAML at `p`, with its `base:` file (and that file's base ...) merged under it."""
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p} is {p.stat().st_size >> 20} MiB; a config is a small YAML text file")
        data = strict_yaml.load(p.read_text(encoding="utf-8"), p)
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not a text file; pass a YAML config such as configs/v1-finetune.yaml") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config {p}: {e.strerror or e}") from None
    if not isinstance(data, dict) or "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{p}: `base` must name a config file, e.g. base: v1-finetune.yaml")
    base_path = p.parent / base if (p.parent / base).is_file() else resolve_config_path(base)
    if base_path.resolve() in seen:
        raise ConfigError(f"{p}: `base: {base}` leads back to itself")
    under = _read_yaml(base_path, (*seen, p.resolve()))
    if under is not None and not isinstance(under, dict):
        raise ConfigError(f"{p}: `base: {base}` is not a textinv config (it reads as {type(under).__name__}, not as "
                          "sections such as model: and data:); name a config file, e.g. base: v1-finetune.yaml")
    return _merged(under, data)


def _merged(base: Any, over: dict) -> dict:
    if not isinstance(base, dict):
        return over
    return {**base, **{k: _merged(base.get(k), v) if isinstance(v, dict) else v for k, v in over.items()}}


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` -> (key, value), the value read as YAML (`1e-3`, `true`, `[a, b]`, `null`)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value (e.g. optim.learning_rate=1e-3), got `{item}`")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(cfg: Config, items: list[str] | None = None, **named: Any) -> Config:
    """Apply `--set key=value` items, then named flags given as dotted keys (None means not given)."""
    for item in items or []:
        set_key(cfg, *parse_override(item))
    for key, value in named.items():
        if value is not None:
            set_key(cfg, key, value)
    return cfg


def validate(cfg: Config) -> Config:
    """Impossible values are errors here, before any model loads. Returns cfg."""
    _finite(cfg)
    for key, allowed in CHOICES.items():
        value = get_key(cfg, key)
        if value not in allowed:
            shown = " | ".join("null" if a is None else a for a in allowed)
            raise ConfigError(f"`{key}` is {value!r}; it must be one of {shown}")
    p = cfg.personalization
    if not p.placeholder_strings:
        raise ConfigError("`personalization.placeholder_strings` is empty; give at least one placeholder, e.g. '*'")
    for s in p.placeholder_strings:
        if not s.strip():
            raise ConfigError("a placeholder is empty; pass a word such as '*' or '<my-cat>' with --placeholder")
        if any(c.isspace() for c in s):
            raise ConfigError(f"placeholder {s!r} contains a space; a placeholder must be one word, e.g. '<my-cat>'")
    if len(set(p.placeholder_strings)) != len(p.placeholder_strings):
        raise ConfigError(f"placeholders repeat: {p.placeholder_strings}; each must be different")
    if len(p.initializer_words) != len(p.placeholder_strings):
        raise ConfigError(
            f"{len(p.placeholder_strings)} placeholder(s) {p.placeholder_strings} but {len(p.initializer_words)} "
            f"init word(s) {p.initializer_words}; give one --init-word per placeholder"
        )
    for w in p.initializer_words:
        if not w.strip():
            raise ConfigError("an init word is empty; pass a word that describes the concept, e.g. --init-word cat")
    _at_least(cfg, 1, "personalization.num_vectors_per_token", "train.max_steps", "data.resolution",
              "data.batch_size", "data.repeats", "optim.gradient_accumulation_steps", "log.num_images",
              "log.sample_steps", "log.val_samples")
    _at_least(cfg, 0, "optim.lr_warmup_steps", "optim.weight_decay", "optim.max_grad_norm", "log.save_every",
                  "log.image_every", "train.seed", "log.val_loss_every", "log.eval_every", "train.early_stop",
                  "optim.embedding_reg_weight", "optim.min_snr_gamma", "optim.max_drift",
                  "optim.edit_anchor_weight")
    for key in ("optim.norm_cap", "train.flux_guidance"):  # reals: a cap in vocabulary median norms, a guidance
        if not get_key(cfg, key) > 0:
            raise ConfigError(f"`{key}` is {get_key(cfg, key)}; it must be above 0")
    if not 0.0 <= cfg.optim.ema_decay < 1.0:
        raise ConfigError(f"`optim.ema_decay` is {cfg.optim.ema_decay}; it must be in [0, 1) (0: off; OneTrainer: 0.999)")
    if cfg.train.max_memory is not None and not 0 < cfg.train.max_memory <= MAX_MEMORY_GIB:
        raise ConfigError(f"`train.max_memory` is {cfg.train.max_memory}; it must be above 0 and at most "
                          f"{MAX_MEMORY_GIB} (GiB, e.g. 6 for a 6 GiB budget)")
    if cfg.train.early_stop and not cfg.log.val_loss_every:
        raise ConfigError("`train.early_stop` needs the validation loss; set `log.val_loss_every` (e.g. 100)")
    if p.num_vectors_per_token > 75:
        raise ConfigError("`personalization.num_vectors_per_token` is over 75; a prompt holds at most 75 tokens")
    if cfg.data.resolution % 8:
        raise ConfigError(
            f"`data.resolution` is {cfg.data.resolution}; it must be a multiple of 8 (the VAE downsamples by 8), "
            "e.g. 512 for SD1.x or 768 for SD2.x"
        )
    if not 0.0 <= cfg.data.flip_p <= 1.0:
        raise ConfigError(f"`data.flip_p` is {cfg.data.flip_p}; a probability must be between 0 and 1")
    if not 0 < cfg.optim.learning_rate <= MAX_LEARNING_RATE:
        raise ConfigError(
            f"`optim.learning_rate` is {cfg.optim.learning_rate}; it must be above 0 and at most "
            f"{MAX_LEARNING_RATE:g} (the paper uses 5e-3)"
        )
    if cfg.train.seed > MAX_SEED:
        raise ConfigError(f"`train.seed` is {cfg.train.seed}; it must be at most {MAX_SEED} (a 32-bit seed)")
    for key, (bound, why) in UPPER_BOUNDS.items():
        if get_key(cfg, key) > bound:
            raise ConfigError(f"`{key}` is {get_key(cfg, key)}; it must be at most {bound} ({why})")
    most = max_batch_size(cfg.data.resolution)
    if cfg.data.batch_size > most:
        raise ConfigError(
            f"`data.batch_size` is {cfg.data.batch_size}; at {cfg.data.resolution} px at most {most} images fit in "
            "one micro-batch: use optim.gradient_accumulation_steps for a larger effective batch"
        )
    for b in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(cfg.optim, b) < 1.0:
            raise ConfigError(f"`optim.{b}` is {getattr(cfg.optim, b)}; it must be in [0, 1) (the decay rate of one "
                              "of AdamW's moving averages)")
    if not cfg.optim.adam_epsilon > 0:
        raise ConfigError("`optim.adam_epsilon` must be above 0")
    if cfg.log.guidance_scale < 1:
        raise ConfigError(f"`log.guidance_scale` is {cfg.log.guidance_scale}; it must be 1 or more")
    bad = [f for f in cfg.log.formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"`log.formats` has {bad}; the training formats are {', '.join(FORMATS)}")
    several = [f for f in cfg.log.formats if f not in ("pt", "paper-pt")] if len(p.placeholder_strings) > 1 else []
    if several:
        raise ConfigError(
            f"`log.formats` has {several}, which hold one token, but there are {len(p.placeholder_strings)} "
            "placeholders; keep pt (the paper layout holds them all) and split later with `textinv convert --split`"
        )
    if "pt" not in cfg.log.formats:
        cfg.log.formats = ["pt", *cfg.log.formats]
    if cfg.log.name is not None and (not cfg.log.name.strip() or "/" in cfg.log.name):
        raise ConfigError(f"run name {cfg.log.name!r} must be non-empty and contain no '/'")
    if not cfg.model.source.strip():
        raise ConfigError("`model.source` is empty; pass --model with a hub id, a diffusers folder or a checkpoint")
    for tracker in ("tensorboard", "wandb"):
        if cfg.log.report_to in (tracker, "all") and importlib.util.find_spec(tracker) is None:
            raise ConfigError(f"--report-to {cfg.log.report_to} needs the {tracker} package: "
                              f"pip install 'textinv[{tracker}]'")
    return cfg


def _finite(cfg: Config) -> None:
    """NaN or infinity in any number is an error (YAML reads .nan and .inf; every comparison with NaN is false)."""
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            value = getattr(getattr(cfg, section.name), f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"`{section.name}.{f.name}` is {value}; it must be a finite number")


def _at_least(cfg: Config, low: int, *keys: str) -> None:
    for key in keys:
        if get_key(cfg, key) < low:
            raise ConfigError(f"`{key}` is {get_key(cfg, key)}; it must {'be 1 or more' if low else 'not be negative'}")


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML, in schema order."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def build_config(
    path: str | Path | None, sets: list[str] | None = None, *, notes: list[str] | None = None, **named: Any
) -> Config:
    """The config a run uses: the file (default: the packaged one for the model's family, v1-finetune.yaml or
    sdxl-finetune.yaml), then --set, then named flags (dotted keys, None = not given), then validation. Local
    paths become absolute and normalised (no `..`), so that the saved config works from any folder. Nothing here
    loads a model."""
    if path is None:  # no --config: the packaged config for the model's family
        from textinv.models.peek import default_config

        source = named.get("model.source") or dict(parse_override(s) for s in sets or []).get("model.source")
        path = default_config(source)
    cfg = load_config(path, notes=notes)
    cfg = validate(apply_overrides(cfg, sets, **named))
    cfg.data.paths = [_full_path(d) for d in cfg.data.paths]
    if cfg.model.config:
        cfg.model.config = _full_path(cfg.model.config)
    if cfg.model.source != "toy" and Path(cfg.model.source).expanduser().exists():
        cfg.model.source = _full_path(cfg.model.source)
    return cfg


def _full_path(path: str) -> str:
    """`path` absolute, `~` expanded and `..` folded away (symlinks are kept: they are the user's names)."""
    return os.path.abspath(Path(path).expanduser())

