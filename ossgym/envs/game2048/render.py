"""Pictures of a 2048 board: ANSI-coloured text and an RGB image like the web game (drawn with Pillow).

Both take the board as exponents (0 = empty, ``e`` = tile ``2**e``), as the engine holds it.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Colours of the web game (gabrielecirulli/2048), by exponent; exponents above 11 share the last one.
_TILE_RGB = [
    (205, 193, 180),  # empty cell
    (238, 228, 218), (237, 224, 200), (242, 177, 121), (245, 149, 99), (246, 124, 95), (246, 94, 59),
    (237, 207, 114), (237, 204, 97), (237, 200, 80), (237, 197, 63), (237, 194, 46), (60, 58, 50),
]
_DARK_TEXT = (119, 110, 101)
_LIGHT_TEXT = (249, 246, 242)
_BOARD_RGB = (187, 173, 160)
_PAGE_RGB = (250, 248, 239)

TILE_PX = 96
GAP_PX = 12
HEADER_PX = 56

# 256-colour ANSI background codes approximating the web colours, by exponent.
_ANSI_BG = [250, 255, 230, 215, 209, 203, 196, 222, 221, 220, 214, 226, 236]
_RESET = "\x1b[0m"


def _tile_rgb(e: int) -> tuple[int, int, int]:
    return _TILE_RGB[min(int(e), len(_TILE_RGB) - 1)]


def _text_rgb(e: int) -> tuple[int, int, int]:
    return _DARK_TEXT if e <= 2 else _LIGHT_TEXT


def render_ansi(board: np.ndarray, score: int | None = None, color: bool = True) -> str:
    """The board as text, one tile value per cell (``.`` = empty), ANSI-coloured unless ``color=False``."""
    b = np.asarray(board)
    width = max(5, len(str(1 << int(b.max()))) + 2)
    lines = []
    if score is not None:
        lines.append(f"score {score}  max tile {1 << int(b.max()) if b.max() else 0}")
    for row in b:
        cells = []
        for e in row:
            e = int(e)
            text = (str(1 << e) if e else ".").center(width)
            if color:
                fg = "30" if e <= 2 else "97"
                bg = _ANSI_BG[min(e, len(_ANSI_BG) - 1)]
                text = f"\x1b[1;{fg};48;5;{bg}m{text}{_RESET}"
            cells.append(text)
        lines.append(" ".join(cells))
    return "\n".join(lines)


def image_shape(size: int) -> tuple[int, int, int]:
    """Shape (height, width, 3) of :func:`render_rgb` for a ``size x size`` board."""
    side = size * TILE_PX + (size + 1) * GAP_PX
    return HEADER_PX + side, side, 3


@functools.cache
def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)


@functools.cache
def _tile_image(e: int) -> Image.Image:
    """One rounded tile with its number, cached per exponent."""
    tile = Image.new("RGB", (TILE_PX, TILE_PX), _BOARD_RGB)
    draw = ImageDraw.Draw(tile)
    draw.rounded_rectangle((0, 0, TILE_PX - 1, TILE_PX - 1), radius=6, fill=_tile_rgb(e))
    if e:
        text = str(1 << e)
        px = {1: 48, 2: 48, 3: 40, 4: 32, 5: 26}.get(len(text), 22)
        draw.text((TILE_PX / 2, TILE_PX / 2), text, fill=_text_rgb(e), font=_font(px), anchor="mm")
    return tile


def render_rgb(board: np.ndarray, score: int | None = None) -> np.ndarray:
    """The board as an RGB picture like the web game, uint8 of shape :func:`image_shape`."""
    b = np.asarray(board)
    size = b.shape[0]
    height, width, _ = image_shape(size)
    img = Image.new("RGB", (width, height), _PAGE_RGB)
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((0, HEADER_PX, width - 1, height - 1), radius=8, fill=_BOARD_RGB)
    if score is not None:
        draw.text((GAP_PX, HEADER_PX / 2), f"score {score}", fill=_DARK_TEXT, font=_font(28), anchor="lm")
    for r in range(size):
        for c in range(size):
            x = GAP_PX + c * (TILE_PX + GAP_PX)
            y = HEADER_PX + GAP_PX + r * (TILE_PX + GAP_PX)
            img.paste(_tile_image(int(b[r, c])), (x, y))
    return np.asarray(img, dtype=np.uint8).copy()
