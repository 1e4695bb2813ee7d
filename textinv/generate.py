"""Make images from prompts (and from a starting image), one seed per image, and save them with their parameters.

Every PNG carries its generation parameters twice: a `parameters` text chunk in AUTOMATIC1111's layout (which
A1111's "PNG Info", civitai and most metadata readers parse) and InvokeAI 2.x's `Dream` command line plus its
`sd-metadata` JSON. Images are made one at a time with their own seed, so any single image can be made again
with `--seed S -n 1`. The library never prints; `progress` is called after each denoising step.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from textinv.errors import ConfigError, DataError, UsageError
from textinv.png_metadata import a1111_parameters, dream_command, invoke_metadata, png_info, read_parameters  # noqa: F401

# progress(image_index, n_images, step, n_steps): step 0 is "starting this image".
ProgressFn = Callable[[int, int, int, int], None]

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
    model: str
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


# --- validation ------------------------------------------------------------------------------------------------


def check_request(
    *, n: int, steps: int, cfg: float, strength: float | None = None, width=None, height=None
) -> None:
    """Raise UsageError for values that cannot work, before any model is loaded."""
    if n < 1:
        raise UsageError(f"-n {n}: the number of images must be 1 or more")
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


def load_init_image(path: str | Path):
    """An RGB image from `path`, or one clear error."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"--init-img {path}: no such file")
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im).convert("RGB")  # phone photos are stored sideways plus a tag
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"--init-img {path}: not a readable image ({e}); pass a PNG or JPEG") from None


def txt2img(
    pipe,
    prompt: str,
    *,
    negative: str = "",
    n: int = 1,
    steps: int = 50,
    cfg: float = 7.5,
    seed: int | None = None,
    width: int | None = None,
    height: int | None = None,
    scheduler: str | None = None,
    progress: ProgressFn | None = None,
) -> list[GeneratedImage]:
    """`n` images for `prompt`; image i uses seed `seed + i` (a random seed when None)."""
    from textinv.models import as_txt2img

    check_request(n=n, steps=steps, cfg=cfg, width=width, height=height)
    run = as_txt2img(pipe)
    default = run.unet.config.sample_size * run.vae_scale_factor
    params = _params(run, prompt, negative, steps, cfg, seed, width or default, height or default, scheduler)
    return _make(run, params, n, progress)


def img2img(
    pipe,
    prompt: str,
    init_image: str | Path,
    *,
    strength: float = 0.5,
    negative: str = "",
    n: int = 1,
    steps: int = 50,
    cfg: float = 7.5,
    seed: int | None = None,
    width: int | None = None,
    height: int | None = None,
    scheduler: str | None = None,
    progress: ProgressFn | None = None,
) -> list[GeneratedImage]:
    """`n` variations of `init_image` towards `prompt`; `strength` 0 keeps it, 1 replaces it. Runs
    `int(steps * strength)` denoising steps; the output has the init image's size unless width/height say."""
    from textinv.models import as_img2img

    check_request(n=n, steps=steps, cfg=cfg, strength=strength, width=width, height=height)
    image = load_init_image(init_image)
    width = width or max(8, image.width // 8 * 8)
    height = height or max(8, image.height // 8 * 8)
    if image.size != (width, height):
        image = image.resize((width, height))
    run = as_img2img(pipe)
    params = _params(run, prompt, negative, steps, cfg, seed, width, height, scheduler)
    params = replace(params, init_image=str(init_image), strength=strength)
    return _make(run, params, n, progress, image)


def _params(run, prompt, negative, steps, cfg, seed, width, height, scheduler) -> GenerationParams:
    """The parameters of the first image (its seed is the base seed); sets the scheduler on `run`."""
    info = getattr(run, "textinv", None)
    return GenerationParams(
        prompt=prompt,
        negative=negative,
        steps=steps,
        cfg=cfg,
        seed=secrets.randbits(32) if seed is None else seed,
        width=width,
        height=height,
        sampler=set_scheduler(run, scheduler),
        model=info.name if info is not None else type(run).__name__,
        embeddings=_embeddings_in(run, prompt, negative),
    )


def _make(
    run, first: GenerationParams, n: int, progress: ProgressFn | None, init=None
) -> list[GeneratedImage]:
    """One image at a time, each from its own seed, so any one of them can be made again alone."""
    results = []
    for i in range(n):
        p = replace(first, seed=(first.seed + i) % 2**32)
        kwargs = dict(
            prompt=p.prompt,
            negative_prompt=p.negative or None,
            num_inference_steps=p.steps,
            guidance_scale=p.cfg,
            generator=torch.Generator("cpu").manual_seed(p.seed),  # CPU noise: the same image on every device
            callback_on_step_end=_step_callback(progress, i, n),
        )
        if init is not None:
            kwargs.update(image=init, strength=p.strength)
        else:
            kwargs.update(width=p.width, height=p.height)
        if progress is not None:
            progress(i, n, 0, int(p.steps * p.strength) if init is not None else p.steps)
        with torch.inference_mode():
            image = run(**kwargs).images[0]
        results.append(GeneratedImage(image=image, params=p))
    return results


def _step_callback(progress: ProgressFn | None, i: int, n: int):
    def on_step(pipe, step, timestep, tensors):
        if progress is not None:
            progress(i, n, step + 1, pipe.num_timesteps)
        return tensors

    return on_step


def _embeddings_in(pipe, *texts: str) -> list[tuple[str, str]]:
    info = getattr(pipe, "textinv", None)
    if info is None:
        return []
    used = []
    for placeholder, loaded in info.embeddings.items():
        if any(placeholder in t for t in texts):
            used.append((placeholder, loaded.hash))  # the word the prompt uses, as A1111 names them
    return list(dict.fromkeys(used))


# --- files ---------------------------------------------------------------------------------------


def next_index(out_dir: Path) -> int:
    """The number after the highest `NNNNNN.` file name in `out_dir` (InvokeAI's numbering)."""
    numbers = [int(m.group(1)) for p in out_dir.glob("*.png") if (m := re.match(r"^(\d{6})\.", p.name))]
    return max(numbers, default=0) + 1


def save_images(
    results: list[GeneratedImage], out_dir: str | Path, *, grid: bool | None = None
) -> tuple[list[Path], Path | None]:
    """Write `NNNNNN.SEED.png` per image (and `NNNNNN.SEED.grid.png`, a contact sheet, when there are several)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"--out {out_dir}: cannot create the folder ({e})") from None
    start = next_index(out_dir)
    paths = []
    for k, r in enumerate(results):
        path = out_dir / f"{start + k:06d}.{r.seed}.png"
        r.image.save(path, format="PNG", pnginfo=png_info(r.params))
        paths.append(path)
    grid_path = None
    if (grid if grid is not None else len(results) > 1) and results:
        first = results[0]
        grid_path = out_dir / f"{start:06d}.{first.seed}.grid.png"
        contact_sheet([r.image for r in results]).save(
            grid_path, format="PNG", pnginfo=png_info(first.params)
        )
    return paths, grid_path


def contact_sheet(images: list, *, columns: int | None = None):
    """The images in a grid, as square as their count allows, row by row."""
    from PIL import Image

    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    sheet = Image.new("RGB", (columns * w, rows * h), (0, 0, 0))
    for i, im in enumerate(images):
        sheet.paste(im, ((i % columns) * w, (i // columns) * h))
    return sheet
