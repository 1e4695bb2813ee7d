"""Training images: every mode and orientation, non-images skipped, captions and templates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from textinv.errors import DataError
from textinv.pictures import MANY_IMAGES, load_folder, prepare, read_image, to_rgb
from textinv.training.data import fill_prompt, load_templates


def test_rgba_is_composited_over_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    img.putpixel((0, 0), (255, 0, 0, 255))
    rgb = to_rgb(img)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((1, 1)) == (255, 255, 255) and rgb.getpixel((0, 0)) == (255, 0, 0)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I")
    assert [to_rgb(img).getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_grayscale_and_palette_become_rgb():
    assert to_rgb(Image.new("L", (2, 2), 77)).getpixel((0, 0)) == (77, 77, 77)
    pal = Image.new("P", (2, 2))
    pal.putpalette([10, 20, 30] * 256)
    assert to_rgb(pal).getpixel((0, 0)) == (10, 20, 30)


def test_exif_rotation_is_applied(tmp_path):
    # a 20x10 landscape whose left half is black, stored with orientation 6 ("rotate 90 CW to display")
    arr = np.full((10, 20, 3), 255, np.uint8)
    arr[:, :10] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "phone.jpg") as img:
        px = prepare(img, 8, center_crop=False)
    # displayed upright it is portrait with the black half on top
    assert px[:, 0].mean() < -0.9 and px[:, -1].mean() > 0.9


def test_center_crop_and_resize_give_the_resolution_in_range():
    arr = np.zeros((30, 90, 3), np.uint8)
    arr[:, 30:60] = 255  # a white centre square between black side bands
    px = prepare(Image.fromarray(arr), 16, center_crop=True)
    assert px.shape == (3, 16, 16) and px.dtype == torch.float32
    assert px.min() >= -1 and px.max() <= 1
    assert px.mean() > 0.95  # only the white centre survives the crop
    squashed = prepare(Image.fromarray(arr), 16, center_crop=False)
    assert squashed.mean() < 0  # the black bands remain


def test_folder_skips_non_images_with_a_warning_and_reads_captions(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "b.png")
    Image.new("RGBA", (8, 6), "blue").save(tmp_path / "a.webp")
    (tmp_path / "a.txt").write_text("a photo of * on a sofa\n")
    (tmp_path / "notes.md").write_text("hello")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0")
    (tmp_path / "sub").mkdir()
    images, warnings = load_folder(tmp_path, 8)
    assert [i.path.name for i in images] == ["a.webp", "b.png"]
    assert images[0].caption == "a photo of * on a sofa" and images[1].caption is None
    assert warnings == [f"skipped 2 file(s) in {tmp_path} that are not images: broken.jpg, notes.md",
                        f"skipped the subfolder(s) sub of {tmp_path}: only the images directly in it are read; "
                        "pass a subfolder as another DIR to train on its images too"]  # issue 11: not silently


def test_many_images_warn(tmp_path):
    for i in range(MANY_IMAGES + 1):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"{i}.png")
    _, warnings = load_folder(tmp_path, 8)
    assert warnings == [f"6 images in {tmp_path}; the paper found 3-5 images work best, more rarely help"]


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match=r"no images in .* \(it is empty\); pass a folder"):
        load_folder(tmp_path, 8)
    (tmp_path / "x.txt").write_text("caption without image")
    (tmp_path / "y.csv").write_text("1,2")
    with pytest.raises(DataError, match=r"found 2 file\(s\), none of them an image"):
        load_folder(tmp_path, 8)
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "missing", 8)
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_folder(tmp_path / "x.txt", 8)


def test_templates_and_prompt_filling():
    obj, style = load_templates("object"), load_templates("style")
    assert len(obj) == 27 and len(style) == 19
    assert obj[0] == "a photo of a [name]" and style[0] == "a painting in the style of [name]"
    assert all("[name]" in t for t in obj + style)
    assert fill_prompt("a photo of a [name]", "<cat>") == "a photo of a <cat>"
    assert fill_prompt("a photo of *, on a sofa", "<cat>") == "a photo of <cat>, on a sofa"
    assert fill_prompt("* and * again", "x y") == "x y and x y again"
    assert fill_prompt("a photo of a*b", "<cat>") == "a photo of a*b"  # only a lone *
    with pytest.raises(DataError, match="use object or style"):
        load_templates("scene")


# --- one reader for training and img2img ---------------------------------------------------------------------


def _odd_images(folder):
    """A 16-bit grey PNG, a float TIFF and a half-transparent RGBA PNG: the three img2img once read wrongly."""
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(folder / "grey16.png")
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(folder / "float.tif")
    Image.new("RGBA", (8, 8), (0, 0, 255, 0)).save(folder / "clear.png")
    return {p.name: p for p in folder.iterdir()}


def test_img2img_and_training_read_the_same_pixels(tmp_path):
    from textinv.generation.sampling import load_init_image

    files = _odd_images(tmp_path / "odd")
    expected = {"grey16.png": (128, 128, 128), "float.tif": (128, 128, 128), "clear.png": (255, 255, 255)}
    images, _ = load_folder(tmp_path / "odd", 8, center_crop=False)
    for trained in images:
        init = load_init_image(files[trained.path.name])
        assert init.mode == "RGB" and init.getpixel((3, 3)) == expected[trained.path.name]
        assert np.array_equal(np.asarray(init), np.asarray(read_image(trained.path)))
        as_tensor = torch.from_numpy(np.asarray(init, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        assert torch.allclose(trained.pixels, as_tensor)  # same size: the resize keeps every pixel


def test_absurd_sizes_are_refused_before_decoding(tmp_path, monkeypatch):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # a 20000 x 20000 PNG header (400 Mpx) with no pixel data: refused from the header, nothing decoded
    bomb = tmp_path / "bomb.png"
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    with pytest.raises(DataError, match=r"--init-img .*bomb.png: over the 120 Mpx that textinv reads; resize it"):
        read_image(bomb, what="--init-img")
    monkeypatch.setattr("textinv.pictures.MAX_PIXELS", 50)
    Image.new("RGB", (10, 8)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match=r"big.png: 10x8 is 0 Mpx, over the 0 Mpx that textinv reads"):
        load_folder(tmp_path, 8)


def test_a_folder_of_subfolders_is_not_called_empty(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    with pytest.raises(DataError, match=r"\(it holds only subfolders: cats, dogs; pass the folder the images are in\)"):
        load_folder(tmp_path, 8)


def test_subfolders_beside_images_are_named_in_a_warning(tmp_path):
    folder = tmp_path / "pics"
    (folder / "more").mkdir(parents=True)
    (folder / ".git").mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (i * 60, 0, 0)).save(folder / f"img{i}.png")
    Image.new("RGB", (40, 40)).save(folder / "more" / "deep.png")
    images, warnings = load_folder(folder, 32)
    assert [im.path.name for im in images] == ["img0.png", "img1.png", "img2.png"]
    assert warnings == [f"skipped the subfolder(s) more of {folder}: only the images directly in it are read; "
                        "pass a subfolder as another DIR to train on its images too"]
