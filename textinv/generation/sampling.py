"""Make images from prompts (and from a starting image), one seed per image, and describe how they were made.

Images are made in batches with one generator per image, so image i of any batch is the image `--seed S+i -n 1`
makes (to float tolerance). Every PNG carries its generation parameters twice: a `parameters` text chunk in
AUTOMATIC1111's layout (which A1111's "PNG Info", civitai and most metadata readers parse) and InvokeAI 2.x's
`Dream` command line plus its `sd-metadata` JSON. The library never prints; progress goes to a `Reporter`.
Saving them, with a loaded model kept between requests, is `textinv.generation.session`.
"""

from __future__ import annotations

import inspect
import math
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from textinv.config import MAX_SEED
from textinv.errors import ConfigError, UsageError
from textinv.hashing import sha256
from textinv.reporting import SILENT, Reporter

# name -> (diffusers class, extra config, AUTOMATIC1111's sampler name). InvokeAI's k_ names are accepted too.
SCHEDULERS: dict[str, tuple[str, dict, str]] = {
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "plms": ("PNDMScheduler", {"skip_prk_steps": True}, "PLMS"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun"),
    "dpm_2": ("KDPM2DiscreteScheduler", {}, "DPM2"),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}, "DPM2 a"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}, "DPM++ 2M"),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M Karras"),
    "lms": ("LMSDiscreteScheduler", {}, "LMS"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "ddpm": ("DDPMScheduler", {}, "DDPM"),
}
_ALIASES = {"pndm": "plms", "dpm++": "dpmpp_2m", "dpm++_2m": "dpmpp_2m", "dpm++_2m_karras": "dpmpp_2m_karras"}
# a diffusers class -> its A1111 name (the first entry wins: DPMSolverMultistepScheduler is "DPM++ 2M")
_SAMPLER_OF_CLASS = {cls: name for cls, _, name in reversed(list(SCHEDULERS.values()))}


@dataclass
class GenerationParams:
    """Everything needed to make one image again."""

    prompt: str
    negative: str
    steps: int
    cfg: float
    seed: int
    width: int
    height: int
    sampler: str
    model: str  # its name: hub id, folder name, or a checkpoint file's stem (what AUTOMATIC1111 shows)
    model_sha256: str | None = None  # a single-file checkpoint's sha256 (PNG metadata's model hashes)
    # (placeholder, short hash of its file) for each embedding the prompt uses
    embeddings: list[tuple[str, str]] = field(default_factory=list)
    init_image: str | None = None
    strength: float | None = None

    @property
    def kind(self) -> str:
        return "img2img" if self.init_image is not None else "txt2img"


@dataclass
class GeneratedImage:
    image: object  # PIL.Image.Image
    params: GenerationParams

    @property
    def seed(self) -> int:
        return self.params.seed


def scheduler_name(name: str) -> str:
    """The SCHEDULERS key for a user's spelling: 'Euler a', 'k_euler_a', 'euler-a', 'DPM++ 2M' ..."""
    key = re.sub(r"[\s-]+", "_", name.strip().lower())
    key = key.removeprefix("k_")
    key = _ALIASES.get(key, key)
    if key not in SCHEDULERS:
        for k, (_, _, a1111) in SCHEDULERS.items():
            if a1111.lower() == name.strip().lower():
                return k
        raise UsageError(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)}")
    return key


def set_scheduler(pipe, name: str | None) -> str:
    """Switch `pipe` to scheduler `name` (None: the model's own) and return its AUTOMATIC1111 name."""
    import diffusers

    info = getattr(pipe, "textinv", None)
    base = getattr(info, "base_scheduler", None) if info is not None else None
    if base is None:
        base = pipe.scheduler
        if info is not None:
            info.base_scheduler = base
    if name is None:
        pipe.scheduler = base
        return _SAMPLER_OF_CLASS.get(type(base).__name__, type(base).__name__.removesuffix("Scheduler"))
    key = scheduler_name(name)
    if type(base).__name__.startswith("FlowMatch"):  # SD3, Flux.1: none of the SD schedulers samples a flow
        raise UsageError(f"--scheduler {name}: this model samples with its flow-matching Euler scheduler; "
                         "leave --scheduler out")
    cls_name, extra, a1111 = SCHEDULERS[key]
    try:
        pipe.scheduler = getattr(diffusers, cls_name).from_config(base.config, **extra)
    except ImportError as e:  # LMS needs scipy
        found = re.search(r"requires the (\w+) library", str(e))
        package = found.group(1) if found else "a package that is not installed"
        raise ConfigError(
            f"--scheduler {name} needs {package} (pip install {package}); pick another one"
        ) from None
    return a1111


# --- making images --------------------------------------------------------------------------------------------


def default_batch_size(device: torch.device) -> int:
    """Images per pipeline call when --batch-size is not given. On the CPU memory is rarely short and a batch
    saves the per-call overhead; on a GPU, 4 SD1.5 images at 512 px (fp16, decoded together) fit in 8 GB."""
    return 8 if device.type == "cpu" else 4


@dataclass
class Request:
    """One `generate`/`img2img` command (or dream> line): what to make. `init_image` makes it img2img."""

    prompt: str
    negative: str = ""
    n: int = 1
    steps: int = 50
    cfg: float = 7.5
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    scheduler: str | None = None
    init_image: str | Path | None = None
    strength: float = 0.5
    batch_size: int | None = None  # images per pipeline call; None: default_batch_size(device)

    def check(self, *, read_init: bool = True) -> None:
        """Raise UsageError/DataError for values that cannot work, before any model is loaded; with `read_init`,
        also read the init image."""
        img2img = self.init_image is not None
        check_request(n=self.n, steps=self.steps, cfg=self.cfg, strength=self.strength if img2img else None,
                      width=self.width, height=self.height, batch_size=self.batch_size, seed=self.seed)
        if self.scheduler is not None:
            scheduler_name(self.scheduler)
        if img2img and read_init:
            load_init_image(self.init_image)


def check_request(
    *, n: int, steps: int, cfg: float, strength: float | None = None, width=None, height=None, batch_size=None,
    seed: int | None = None,
) -> None:
    """Raise UsageError for values that cannot work, before any model is loaded."""
    if seed is not None and not 0 <= seed <= MAX_SEED:  # image i uses (seed + i) mod 2^32: a larger seed would wrap
        raise UsageError(f"--seed {seed}: must be between 0 and {MAX_SEED} (a 32-bit seed, as train.seed)")
    if n < 1:
        raise UsageError(f"-n {n}: the number of images must be 1 or more")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be 1 or more (images made in one pipeline call)")
    if steps < 1:
        raise UsageError(f"--steps {steps}: the number of denoising steps must be 1 or more (50 is typical)")
    if not math.isfinite(cfg) or cfg < 0:
        raise UsageError(f"--cfg {cfg}: the guidance scale must be 0 or more (7.5 is typical)")
    if strength is not None:
        if not 0.0 <= strength <= 1.0:
            raise UsageError(
                f"--strength {strength}: must be between 0 and 1 (0.5 keeps half of the init image)"
            )
        if int(steps * strength) < 1:
            raise UsageError(
                f"--strength {strength} with --steps {steps} leaves no denoising step; raise --strength or --steps"
            )
    for flag, value in (("--width", width), ("--height", height)):
        if value is not None and (value < 8 or value % 8):
            raise UsageError(f"{flag} {value}: must be a positive multiple of 8 (e.g. 512)")


def load_init_image(path: str | Path):
    """The init image as RGB, read as training reads its pictures (`textinv.pictures.read_image`)."""
    from textinv.pictures import read_image

    return read_image(path, what="--init-img")


def make(pipe, request: Request, *, reporter: Reporter = SILENT) -> Iterator[list[GeneratedImage]]:
    """Make `request.n` images, yielding each batch as soon as it is made; image i uses seed `seed + i`.

    Reports the tasks `images` (of n) and `steps` (denoising steps of the current batch).
    """
    from textinv.models.denoiser import default_side
    from textinv.models.loading import as_img2img, as_txt2img

    request.check(read_init=False)
    init = None
    if request.init_image is not None:
        init = load_init_image(request.init_image)
        width = request.width or max(8, init.width // 8 * 8)
        height = request.height or max(8, init.height // 8 * 8)
        if init.size != (width, height):
            init = init.resize((width, height))
        run = as_img2img(pipe)
    else:
        run = as_txt2img(pipe)
        default = default_side(run)
        width, height = request.width or default, request.height or default
    first = _params(run, request, width, height)
    batch = request.batch_size or default_batch_size(run.device)
    reporter.start("images", request.n)
    try:
        for done in range(0, request.n, batch):
            params = [replace(first, seed=(first.seed + i) % 2**32) for i in range(done, min(done + batch, request.n))]
            images = _call(run, params, init, reporter)
            yield [GeneratedImage(image=im, params=p) for im, p in zip(images, params, strict=True)]
            reporter.advance("images", done + len(params))
    finally:
        reporter.finish("images")


def txt2img(pipe, prompt: str, *, reporter: Reporter = SILENT, **request) -> list[GeneratedImage]:
    """`n` images for `prompt`; image i uses seed `seed + i` (a random seed when None). Takes `Request`'s fields."""
    return [g for batch in make(pipe, Request(prompt, **request), reporter=reporter) for g in batch]


def img2img(
    pipe, prompt: str, init_image: str | Path, *, reporter: Reporter = SILENT, **request
) -> list[GeneratedImage]:
    """`n` variations of `init_image` towards `prompt`; `strength` 0 keeps it, 1 replaces it. Runs
    `int(steps * strength)` denoising steps; the output has the init image's size unless width/height say."""
    request = Request(prompt, init_image=init_image, **request)
    return [g for batch in make(pipe, request, reporter=reporter) for g in batch]


def _params(run, request: Request, width: int, height: int) -> GenerationParams:
    """The parameters of the first image (its seed is the base seed); sets the scheduler on `run`."""
    info = getattr(run, "textinv", None)
    params = GenerationParams(
        prompt=request.prompt,
        negative=request.negative,
        steps=request.steps,
        cfg=request.cfg,
        seed=secrets.randbits(32) if request.seed is None else request.seed,
        width=width,
        height=height,
        sampler=set_scheduler(run, request.scheduler),
        model=info.name if info is not None else type(run).__name__,
        model_sha256=sha256(info.source) if info is not None and info.kind == "single-file" else None,
        embeddings=_embeddings_in(run, request.prompt, request.negative),
    )
    if request.init_image is not None:
        params = replace(params, init_image=str(request.init_image), strength=request.strength)
    return params


def _call(run, params: list[GenerationParams], init, reporter: Reporter) -> list:
    """One pipeline call for a batch: one CPU generator per image (the same noise on every device and in any
    batch), so image i is the image `--seed S+i -n 1` makes, to float tolerance."""
    p = params[0]
    steps = int(p.steps * p.strength) if init is not None else p.steps

    def on_step(pipe, step: int, timestep, tensors: dict) -> dict:
        if step == 0 and pipe.num_timesteps != steps:  # Heun and DPM2 evaluate the model twice per step
            reporter.start("steps", pipe.num_timesteps)
        reporter.advance("steps", step + 1)
        return tensors

    from textinv.generation.weighting import prompt_arguments

    kwargs = dict(
        **prompt_arguments(run, p.prompt, p.negative),  # the text, or its embeddings for (word:0.7) or > 75 tokens
        num_images_per_prompt=len(params),
        num_inference_steps=p.steps,
        guidance_scale=p.cfg,
        generator=[torch.Generator("cpu").manual_seed(q.seed) for q in params],
        callback_on_step_end=on_step,
    )
    if init is not None:
        kwargs.update(image=init, strength=p.strength)
        if "height" in inspect.signature(run.__call__).parameters:  # Flux.1's img2img would make its default size
            kwargs.update(width=p.width, height=p.height)
    else:
        kwargs.update(width=p.width, height=p.height)
    reporter.start("steps", steps)
    try:
        with torch.inference_mode():
            return run(**kwargs).images
    finally:
        reporter.finish("steps")


def _embeddings_in(pipe, *texts: str) -> list[tuple[str, str]]:
    info = getattr(pipe, "textinv", None)
    if info is None:
        return []
    used = []
    for placeholder, loaded in info.embeddings.items():
        if any(placeholder in t for t in texts):
            used.append((placeholder, loaded.hash))  # the word the prompt uses, as A1111 names them
    return list(dict.fromkeys(used))
