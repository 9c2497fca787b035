"""The visible mark: who is looking, and when, printed diagonally across the whole picture.

Speed matters (every image view goes through here), so the text is rasterised once per call
into a small tile whose pattern repeats on an axis-aligned grid, and the tile is pasted through
Pillow's C blending; no full-size RGBA layer is ever composited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageChops, ImageDraw

from carematrix.watermark.fonts import load_font, renderable
from carematrix.watermark.model import Viewer

ANGLE = 30.0
#: Opacity of the light letters and of their dark outline: readable on bright and dark
#: areas alike while the picture underneath stays clinically usable.
LIGHT_OPACITY = 0.26
SHADE_OPACITY = 0.20


@dataclass(frozen=True)
class TextTile:
    """Blend masks (0-255 opacity) for one period of the tiled text."""

    shade: Image.Image
    light: Image.Image


def mark_text(viewer: Viewer) -> str:
    minute = viewer.minute
    zone = minute.tzname() or ""
    stamp = f"{minute:%Y-%m-%d %H:%M} {zone}".strip()
    return f"{viewer.name}  {viewer.staff_number}\n{viewer.user_id}\n{stamp}"


#: Font sizes come from a 10% ladder so images of similar size share one cached tile.
_SIZE_LADDER = tuple(round(12 * 1.1**k) for k in range(60))
#: Above this size one-pixel rotation jaggies are invisible at any sane zoom, and nearest-
#: neighbour rotation is four times cheaper than bilinear on these large tiles.
_SMOOTH_ROTATE_BELOW = 40


def font_size_for(size: tuple[int, int]) -> int:
    """Proportional to the short side (about 28 lines of text would fill it), at least 12 px."""
    want = min(size) / 28
    return next((s for s in _SIZE_LADDER if s >= want), _SIZE_LADDER[-1])


def _periodic(block: Image.Image, mask: Image.Image, period: tuple[int, int]) -> Image.Image:
    """One period of the infinite grid of copies of ``block``, wrapped at the edges.

    Copies never overlap where they have ink (see :func:`build_tile`), so pasting each through
    its own coverage mask is the same as taking their union, and runs in Pillow's C code.
    """
    pw, ph = period
    bw, bh = block.size
    canvas = Image.new("L", period)
    kx, ky = math.ceil(bw / pw) + 1, math.ceil(bh / ph) + 1
    for j in range(-ky, ky + 1):
        for i in range(-kx, kx + 1):
            x0, y0 = round(pw / 2 + i * pw - bw / 2), round(ph / 2 + j * ph - bh / 2)
            if x0 < pw and y0 < ph and x0 + bw > 0 and y0 + bh > 0:
                canvas.paste(block, (x0, y0), mask)
    return canvas


@lru_cache(maxsize=64)
def build_tile(text: str, font_size: int) -> TextTile:
    """Rasterise ``text`` rotated by ANGLE into one period of the repeating pattern.

    The grid period is (w + gap) / cos(angle) by (h + gap) / cos(angle) for a w x h text block:
    with that choice no two copies of the block overlap, for any pair of grid offsets.
    """
    font = load_font(font_size)
    text = renderable(text, font)
    stroke = max(1, round(font_size / 14))
    spacing = max(2, font_size // 4)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.multiline_textbbox(
        (0, 0), text, font=font, spacing=spacing, stroke_width=stroke, align="center"
    )
    left, top, right, bottom = (
        math.floor(left),
        math.floor(top),
        math.ceil(right),
        math.ceil(bottom),
    )
    pad = stroke + 2
    size = (right - left + 2 * pad, bottom - top + 2 * pad)
    origin = (pad - left, pad - top)
    shade, light = Image.new("L", size), Image.new("L", size)
    ImageDraw.Draw(shade).multiline_text(
        origin, text, fill=255, font=font, spacing=spacing, align="center", stroke_width=stroke, stroke_fill=255
    )
    ImageDraw.Draw(light).multiline_text(origin, text, fill=255, font=font, spacing=spacing, align="center")
    cos = math.cos(math.radians(ANGLE))
    period = (
        max(8, round((size[0] * 1.3) / cos)),
        max(8, round((size[1] + max(size[1] * 0.9, font_size * 2.5)) / cos)),
    )
    masks = []
    for block, opacity in ((shade, SHADE_OPACITY), (light, LIGHT_OPACITY)):
        smooth = font_size < _SMOOTH_ROTATE_BELOW
        resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
        rotated = block.rotate(ANGLE, resample=resample, expand=True)
        tinted = rotated.point([round(v * opacity) for v in range(256)])
        masks.append(_periodic(tinted, rotated, period))
    return TextTile(*masks)


def paste_text(image: Image.Image, tile: TextTile) -> None:
    """Blend the tiled text into ``image`` (mode ``L`` or ``RGB``) in place."""
    dark, bright = (0, 255) if image.mode == "L" else ((0, 0, 0), (255, 255, 255))
    pw, ph = tile.light.size
    width, height = image.size
    for y in range(0, height, ph):
        for x in range(0, width, pw):
            image.paste(dark, (x, y), tile.shade)
            image.paste(bright, (x, y), tile.light)


def coverage(size: tuple[int, int], tile: TextTile) -> Image.Image:
    """Full-size opacity of the text, for images whose own alpha would otherwise hide it."""
    cover = ImageChops.lighter(tile.shade, tile.light)
    out = Image.new("L", size)
    pw, ph = cover.size
    for y in range(0, size[1], ph):
        for x in range(0, size[0], pw):
            out.paste(cover, (x, y))
    return out
