"""Tensors back into pictures and pictures into grids: the one `to_pil` and the one grid that image logs,
validation, evaluation and generation share."""

from __future__ import annotations

import torch
from PIL import Image

from textinv.pictures import contact_sheet, grid_of, to_pil


def test_to_pil_maps_minus_one_to_one_onto_0_255_and_clamps():
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(1, 1, 4).expand(3, 2, 4).clone()
    x[1] = -2.0  # green below -1 clamps to 0
    pic = to_pil(x.to(torch.float16))
    assert (pic.mode, pic.size) == ("RGB", (4, 2))
    assert [pic.getpixel((i, 1)) for i in range(4)] == [(0, 0, 0), (128, 0, 128), (255, 0, 255), (255, 0, 255)]


def _tile(colour, size=(4, 3), mode="RGB"):
    return Image.new(mode, size, colour)


def test_grid_of_lays_rows_out_on_white_in_the_first_tiles_size():
    red, blue = _tile("red"), _tile("blue", size=(8, 8), mode="RGBA")
    grid = grid_of([[red, blue, red], [blue]])
    assert grid.size == (12, 6)
    assert grid.getpixel((0, 0)) == (255, 0, 0) and grid.getpixel((5, 1)) == (0, 0, 255)  # resized to 4x3, RGB
    assert grid.getpixel((1, 4)) == (0, 0, 255) and grid.getpixel((6, 4)) == (255, 255, 255)  # empty: white


def test_contact_sheet_is_as_square_as_the_count_allows_on_black():
    pics = [_tile(c) for c in ("red", "lime", "blue", "yellow", "red")]
    sheet = contact_sheet(pics)
    assert sheet.size == (3 * 4, 2 * 3)
    assert [sheet.getpixel((x * 4, 0)) for x in range(3)] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    assert sheet.getpixel((4, 3)) == (255, 0, 0) and sheet.getpixel((8, 3)) == (0, 0, 0)  # empty place: black


def test_contact_sheet_keeps_its_columns_even_for_fewer_pictures():
    sheet = contact_sheet([_tile("red"), _tile("blue")], columns=4)
    assert sheet.size == (16, 3) and sheet.getpixel((13, 1)) == (0, 0, 0)
