"""The grey picture a viewer received of an image, made again cheaply, for comparison.

No-forward compares a posted image with the copy its sender received (their name, staff
number and the minute across it, and the hidden pattern): that is what a ward member has to
forward. Rendering that copy again in full (decode the original at full size, mark, encode,
decode the result) cost 10–30 ms per image, on every check that reached it. The comparison
only needs the copy in grey, at the size of the grey original it has already decoded, so the
same marks are laid on that: the hidden pattern is defined over the original's frame, so it
is drawn at that size directly; the text is the rendering's own tile (same font size, same
period, same place), reduced by block averages. What differs from the served bytes is their
JPEG encoding and rounding, a fraction of a grey level against letters of tens.
"""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
from PIL import Image

from carematrix.watermark.decode import _orientation
from carematrix.watermark.hidden import add_layer, grid_shape, pattern_layer, pattern_signs
from carematrix.watermark.model import Viewer
from carematrix.watermark.visible import build_tile, font_size_for, mark_text

_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that turn the picture by 90 degrees


def upright_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the image as it is shown (after its EXIF orientation), which is
    the frame every mark is laid out in; read from the header, nothing decoded."""
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
        return (height, width) if _orientation(im) in _SWAPS_SIDES else (width, height)


def _reduced_tile(tile: Image.Image, served: tuple[int, int], out: tuple[int, int]) -> np.ndarray:
    """Opacity (0–1) of ``tile`` repeated over an image of ``served`` size from its top-left
    corner, as :func:`~carematrix.watermark.visible.paste_text` lays it, averaged down to
    ``out``: one period of the result, which :func:`_laid` repeats from the top-left corner
    (the whole result where it has none).

    A JPEG decoded reduced is ``served`` over an integer factor k: each output pixel is then
    the mean of a k x k block, and since the tiling repeats, that mean is the tile's own k x k
    mean (wrapping at its edges) read at k times the output position, which repeats every
    period / gcd(period, k) output pixels. Other sizes are tiled in full and resized."""
    u = np.asarray(tile)
    ph, pw = u.shape
    w, h = out
    k = round(served[0] / w)
    if k == 1 and served == out:
        return u.astype(np.float32) / 255.0
    if k > 1 and -(-served[0] // k) == w and -(-served[1] // k) == h:
        wrapped = np.pad(u, ((0, k - 1), (0, k - 1)), mode="wrap")
        sums = cv2.boxFilter(wrapped, cv2.CV_32F, (k, k), anchor=(0, 0), normalize=False, borderType=cv2.BORDER_CONSTANT)
        rows, cols = ph // math.gcd(ph, k), pw // math.gcd(pw, k)
        picked = np.take(np.take(sums, (k * np.arange(rows)) % ph, axis=0), (k * np.arange(cols)) % pw, axis=1)
        reduced: np.ndarray = picked / (255.0 * k * k)
        return reduced
    t = u.astype(np.float32) / 255.0
    full = np.tile(t, (-(-served[1] // ph), -(-served[0] // pw)))[: served[1], : served[0]]
    resized: np.ndarray = cv2.resize(full, out, interpolation=cv2.INTER_AREA)
    return resized


def _laid(under: np.ndarray, times: np.ndarray, plus: np.ndarray) -> np.ndarray:
    """``under * times + plus`` as float32, with ``times`` and ``plus`` (of one shape) repeated
    over ``under`` from its top-left corner: block by block, so no full-size copy of them is
    made (the pass over a whole image that tiling them cost was most of a remake)."""
    h, w = under.shape
    ph, pw = times.shape
    out = np.empty((h, w), np.float32)
    for y in range(0, h, ph):
        for x in range(0, w, pw):
            bh, bw = min(ph, h - y), min(pw, w - x)
            block = out[y : y + bh, x : x + bw]
            np.multiply(under[y : y + bh, x : x + bw], times[:bh, :bw], out=block, dtype=np.float32)
            block += plus[:bh, :bw]
    return out


def received_grey(
    grey: np.ndarray, served: tuple[int, int], viewer: Viewer, mark_key: bytes, mark_id: str
) -> np.ndarray:
    """The copy :func:`~carematrix.watermark.render.render_for_viewer` serves ``viewer``
    (with ``mark_id``), in grey at the size of ``grey`` (float32, unrounded): the original in
    grey, decoded at that size (perhaps reduced) from an original whose upright size is
    ``served``. The hidden pattern is added with clipping, then the dark outline and the
    light letters are blended over it as they are pasted: ``x * (1 - shade)``, then
    ``x * (1 - light) + 255 * light``, which is one ``x * a + b`` with ``a`` and ``b`` fixed
    per place in the tile."""
    h, w = grey.shape
    signs = pattern_signs(mark_key, mark_id, grid_shape(*served))
    hidden = add_layer(Image.fromarray(grey), pattern_layer(signs, (w, h), served=served))  # clipped, in C
    tile = build_tile(mark_text(viewer), font_size_for(served))
    shade = _reduced_tile(tile.shade, served, (w, h))
    light = _reduced_tile(tile.light, served, (w, h))
    return _laid(np.asarray(hidden), (1.0 - shade) * (1.0 - light), 255.0 * light)
