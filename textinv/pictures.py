"""Pictures in and out: the one reader for training pictures and img2img's init image (any mode, EXIF rotation
applied, absurd sizes refused before decoding), a folder of training pictures read honestly (non-images skipped
with a warning, captions and masks beside them), and tensors turned back into pictures and sheets of them.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from warnings import catch_warnings, simplefilter

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from textinv.errors import DataError

MANY_IMAGES = 5
# Files that are never images and not worth a warning.
_QUIET = {".txt", ".caption"}
# Larger images are refused before decoding: 120 Mpx covers a 100 MP camera; a 16-bit one of that size already
# takes about 1 GB while it is scaled to 8 bits.
MAX_PIXELS = 120_000_000
_HIDDEN = re.compile(r"^(\.|Thumbs\.db$|desktop\.ini$)", re.IGNORECASE)
MASK_SUFFIX = ".mask"  # cat1.mask.png beside cat1.png: white where the concept is, black elsewhere


@dataclass
class TrainImage:
    """One training image, ready for the VAE: float32 [3, res, res] in [-1, 1]."""

    path: Path
    pixels: torch.Tensor
    caption: str | None = None  # from `<stem>.txt` beside the image; `*` or `[name]` mark the placeholder
    mask: torch.Tensor | None = None  # from `<stem>.mask.png`: float32 [1, res, res] in [0, 1], cropped as the pixels


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha over white, 16/32-bit scaled down rather than clipped, palettes expanded."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            top = 1.0 if arr.max() <= 1.0 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGB" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


class _Unreadable(Exception):
    """Not an image file (or not one PIL can decode)."""


def read_image(path: str | Path, *, what: str = "image") -> Image.Image:
    """The image at `path` as 8-bit RGB, as training and img2img both see it; one clear error otherwise.
    `what` names it in messages (e.g. "--init-img")."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path}: no such file")
    try:
        return _decode(path, f"{what} {path}")
    except _Unreadable as e:
        raise DataError(f"{what} {path}: not a readable image ({e}); pass a PNG or JPEG") from None


def _decode(path: Path, label: str) -> Image.Image:
    """EXIF-rotated 8-bit RGB (`to_rgb`); DataError for a size over MAX_PIXELS, read from the header alone."""
    limit = f"over the {MAX_PIXELS // 1_000_000} Mpx that textinv reads; resize it first"
    try:
        with catch_warnings():
            simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked here instead
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise DataError(f"{label}: {w}x{h} is {w * h / 1e6:.0f} Mpx, {limit}")
                img.load()
                return to_rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError:
        raise DataError(f"{label}: {limit}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise _Unreadable("not readable" if isinstance(e, PermissionError) else str(e)) from e


def prepare(img: Image.Image, resolution: int, center_crop: bool) -> torch.Tensor:
    """EXIF-rotate, RGB, square (centre crop or squash), resize (bicubic, as the paper code) -> [3, r, r] in [-1, 1]."""
    img = to_rgb(ImageOps.exif_transpose(img))
    return _square_tensor(img, resolution, center_crop)


def _square_tensor(img: Image.Image, resolution: int, center_crop: bool) -> torch.Tensor:
    if center_crop:
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_folder(folder: str | Path, resolution: int, *, center_crop: bool = True,
                masks: bool = True) -> tuple[list[TrainImage], list[str]]:
    """Every image in `folder` (not recursive), sorted by name, and the warnings to show the user. Masks
    (`NAME.mask.png`) are never training images; with `masks` each is read into its picture's TrainImage."""
    folder = Path(folder)
    entries, subfolders = _listing(folder)
    images: list[TrainImage] = []
    warnings: list[str] = []
    skipped: list[str] = []
    mask_files = {p.stem.removesuffix(MASK_SUFFIX): p for p in entries if p.stem.endswith(MASK_SUFFIX)}
    for path in entries:
        if _HIDDEN.match(path.name) or path.suffix.lower() in _QUIET or path.stem.endswith(MASK_SUFFIX):
            continue
        try:
            pixels = _square_tensor(_decode(path, str(path)), resolution, center_crop)
        except _Unreadable as e:
            skipped.append(f"{path.name} (not readable)" if str(e) == "not readable" else path.name)
            continue
        mask_file = mask_files.pop(path.stem, None) if masks else None
        mask = _mask(mask_file, path, resolution, center_crop) if mask_file else None
        images.append(TrainImage(path=path, pixels=pixels, caption=_caption(path), mask=mask))
    if masks and mask_files:
        lonely = next(iter(mask_files.values()))
        raise DataError(f"{lonely}: a mask with no picture {lonely.name.replace(MASK_SUFFIX, '')} beside it; name a "
                        "mask after its picture (cat1.png -> cat1.mask.png)")
    if skipped:
        warnings.append(f"skipped {len(skipped)} file(s) in {folder} that are not images: {', '.join(skipped)}")
    if images and subfolders:
        warnings.append(f"skipped the subfolder(s) {', '.join(subfolders)} of {folder}: only the images directly in it "
                        "are read; pass a subfolder as another DIR to train on its images too")
    if not images:
        raise _no_images(folder, entries, subfolders)
    if len(images) > MANY_IMAGES:
        warnings.append(
            f"{len(images)} images in {folder}; the paper found 3-5 images work best, more rarely help"
        )
    return images, warnings


def _mask(mask_path: Path, image_path: Path, resolution: int, center_crop: bool) -> torch.Tensor:
    """The mask of `image_path` as float32 [1, res, res] in [0, 1] (its grey level; white is the concept), cropped
    and resized as the picture is; DataError when it does not fit its picture."""
    try:
        mask = _decode(mask_path, str(mask_path))
    except _Unreadable as e:
        raise DataError(f"{mask_path}: not a readable mask ({e}); save it as a black-and-white PNG") from None
    with Image.open(image_path) as img:
        size = ImageOps.exif_transpose(img).size
    if mask.size != size:
        raise DataError(f"{mask_path.name} is {mask.size[0]}x{mask.size[1]} but its picture {image_path.name} is "
                        f"{size[0]}x{size[1]}; a mask must have its picture's size")
    grey = (_square_tensor(mask, resolution, center_crop).mean(dim=0, keepdim=True) + 1) / 2
    grey = grey.clamp(0, 1)
    if float(grey.max()) < 0.5:
        raise DataError(f"{mask_path.name} is black all over, so nothing of {image_path.name} would be trained on; "
                        "paint the concept white")
    return grey


def check_image_folder(folder: str | Path) -> None:
    """DataError unless `folder` is a folder holding at least one image, told from the files' headers alone: what
    `load_folder` would refuse, found in a moment before any model loads."""
    folder = Path(folder)
    entries, subfolders = _listing(folder)
    for path in entries:
        if _HIDDEN.match(path.name) or path.suffix.lower() in _QUIET or path.stem.endswith(MASK_SUFFIX):
            continue
        try:
            with Image.open(path):
                return
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
    raise _no_images(folder, entries, subfolders)


def _listing(folder: Path) -> tuple[list[Path], list[str]]:
    """The files of an image folder, sorted, and the names of its subfolders that are not hidden."""
    if not folder.exists():
        raise DataError(f"image folder {folder} does not exist; pass a folder of 3-5 .png/.jpg images")
    if not folder.is_dir():
        raise DataError(f"{folder} is a file, not a folder; put the training images in a folder and pass that")
    try:
        everything = sorted(folder.iterdir())
        entries = [p for p in everything if p.is_file()]
        subfolders = [p.name for p in everything if p.is_dir() and not _HIDDEN.match(p.name)]
    except OSError as e:
        raise DataError(f"cannot read image folder {folder}: {e.strerror or e}") from None
    return entries, subfolders


def _no_images(folder: Path, entries: list[Path], subfolders: list[str]) -> DataError:
    if entries:
        found = f" (found {len(entries)} file(s), none of them an image)"
    elif subfolders:
        found = f" (it holds only subfolders: {', '.join(subfolders)}; pass the folder the images are in)"
    else:
        found = " (it is empty)"
    return DataError(f"no images in {folder}{found}; pass a folder of 3-5 .png/.jpg images of the concept")


def _caption(image_path: Path) -> str | None:
    for suffix in (".txt", ".caption"):
        p = image_path.with_suffix(suffix)
        if p.is_file():
            text = " ".join(p.read_text(errors="replace").split())
            return text or None
    return None


def to_pil(x: torch.Tensor) -> Image.Image:
    """A [3, h, w] tensor in [-1, 1] (a training picture, a VAE decode) as an 8-bit RGB picture."""
    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


# A labelled sheet shows each picture at least this big, and is at least SHEET_SIDE on its short side: a 32 px
# training picture is no use to judge at its own size.
MIN_TILE, SHEET_SIDE = 128, 256
_FONT_SIZE, _PAD = 14, 6


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=_FONT_SIZE)
    except (TypeError, OSError, ImportError):  # a Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _wrapped(text: str, width_px: int, font) -> list[str]:
    per_line = max(8, int(width_px / (font.getlength("x") or 7)))
    return textwrap.wrap(text, width=per_line, break_long_words=True) or [""]


def labelled_sheet(rows: list[list[Image.Image]], *, title: str, row_labels: list[str] | None = None,
                   tile_labels: list[list[str]] | None = None) -> Image.Image:
    """Pictures laid out row by row under a `title` line, each row under its label (a prompt) and each picture
    over its own label (a seed, a file name), every picture enlarged by a whole factor (nearest neighbour: the
    pixels stay as they were made) to at least MIN_TILE px, and the sheet at least SHEET_SIDE px on its short side."""
    from PIL import ImageDraw

    font = _font()
    first = next((pic for row in rows for pic in row), None)
    w0, h0 = first.size if first is not None else (MIN_TILE, MIN_TILE)
    columns = max(1, max((len(r) for r in rows), default=1))
    line_h = _FONT_SIZE + 4

    def layout(k: int) -> tuple[int, int, list[list[str]], list[int]]:
        width = columns * (w0 * k + _PAD) + _PAD
        heads = [_wrapped(label, width - 2 * _PAD, font) for label in (row_labels or [""] * len(rows))]
        under = [max((len(_wrapped(t, w0 * k, font)) for t in labels), default=0)
                 for labels in (tile_labels or [[] for _ in rows])]
        height = _PAD + line_h + sum(len(hd) * line_h * bool(row_labels) + h0 * k + n * line_h + 2 * _PAD
                                     for hd, n in zip(heads, under, strict=True))
        return width, height, heads, under

    k = max(1, math.ceil(MIN_TILE / min(w0, h0)))
    while min(layout(k)[:2]) < SHEET_SIDE and k < 64:
        k += 1
    width, height, heads, under = layout(k)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((_PAD, _PAD), title, fill="black", font=font)
    y = _PAD + line_h
    for r, row in enumerate(rows):
        if row_labels:
            for line in heads[r]:
                draw.text((_PAD, y), line, fill=(40, 40, 40), font=font)
                y += line_h
        for c, pic in enumerate(row):
            x = _PAD + c * (w0 * k + _PAD)
            sheet.paste(pic.convert("RGB").resize((w0 * k, h0 * k), Image.Resampling.NEAREST), (x, y))
            labels = tile_labels[r][c] if tile_labels and c < len(tile_labels[r]) else ""
            for i, line in enumerate(_wrapped(labels, w0 * k, font) if labels else []):
                draw.text((x, y + h0 * k + 2 + i * line_h), line, fill=(90, 90, 90), font=font)
        y += h0 * k + under[r] * line_h + 2 * _PAD
    return sheet


def described(title: str, description: str):
    """PNG text chunks (the standard Title and Description keywords) saying in words what a sheet shows."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Title", title)
    info.add_text("Description", description)
    return info


def grid_of(rows: list[list[Image.Image]], *, columns: int | None = None, background: str = "white") -> Image.Image:
    """Pictures laid out row by row, each in a tile of the first one's size; the sheet is `columns` tiles wide
    (default: the longest row), and empty places show `background`."""
    first = next((pic for row in rows for pic in row), None)
    w, h = first.size if first is not None else (8, 8)
    columns = columns or max(1, max(len(r) for r in rows))
    grid = Image.new("RGB", (w * columns, h * len(rows)), background)
    for y, row in enumerate(rows):
        for x, pic in enumerate(row):
            grid.paste(pic.convert("RGB").resize((w, h)), (x * w, y * h))
    return grid


def contact_sheet(images: list[Image.Image], *, columns: int | None = None) -> Image.Image:
    """The images in a grid on black, `columns` wide or as square as their count allows."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    return grid_of([images[i : i + columns] for i in range(0, len(images), columns)], columns=columns,
                   background="black")
