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

import cv2
import numpy as np
from PIL import Image

from carematrix.watermark.decode import _orientation
from carematrix.watermark.hidden import grid_shape, pattern_layer, pattern_signs
from carematrix.watermark.model import Viewer
from carematrix.watermark.visible import build_tile, font_size_for, mark_text

_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that turn the picture by 90 degrees


def upright_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the image as it is shown (after its EXIF orientation), which is
    the frame every mark is laid out in; read from the header, nothing decoded."""
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
        return (height, width) if _orientation(im) in _SWAPS_SIDES else (width, height)


def _reduced_tiling(tile: Image.Image, served: tuple[int, int], out: tuple[int, int]) -> np.ndarray:
    """Opacity (0–1) of ``tile`` repeated over an image of ``served`` size from its top-left
    corner, as :func:`~carematrix.watermark.visible.paste_text` lays it, averaged down to
    ``out``. A JPEG decoded reduced is ``served`` over an integer factor k: each output pixel
    is then the mean of a k x k block, and since the tiling repeats, that mean is the tile's
    own k x k mean (wrapping at its edges) read at k times the output position. Other sizes
    are tiled in full and resized."""
    t = np.asarray(tile, dtype=np.float32) / 255.0
    ph, pw = t.shape
    w, h = out
    k = round(served[0] / w)
    if k == 1 and served == out:
        whole: np.ndarray = np.tile(t, (-(-h // ph), -(-w // pw)))[:h, :w]
        return whole
    if k > 1 and -(-served[0] // k) == w and -(-served[1] // k) == h:
        wrapped = np.pad(t, ((0, k - 1), (0, k - 1)), mode="wrap")
        means = cv2.blur(wrapped, (k, k), anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)[:ph, :pw]
        reduced: np.ndarray = means[np.ix_((k * np.arange(h)) % ph, (k * np.arange(w)) % pw)]
        return reduced
    full = np.tile(t, (-(-served[1] // ph), -(-served[0] // pw)))[: served[1], : served[0]]
    resized: np.ndarray = cv2.resize(full, out, interpolation=cv2.INTER_AREA)
    return resized


def received_grey(
    grey: np.ndarray, served: tuple[int, int], viewer: Viewer, mark_key: bytes, mark_id: str
) -> np.ndarray:
    """The copy :func:`~carematrix.watermark.render.render_for_viewer` serves ``viewer``
    (with ``mark_id``), in grey at the size of ``grey``: the original in grey, decoded at
    that size (perhaps reduced) from an original whose upright size is ``served``."""
    h, w = grey.shape
    signs = pattern_signs(mark_key, mark_id, grid_shape(*served))
    hidden = np.asarray(pattern_layer(signs, (w, h), served=served), dtype=np.float32) - 128.0
    out = np.clip(grey.astype(np.float32) + hidden, 0, 255)
    tile = build_tile(mark_text(viewer), font_size_for(served))
    shade = _reduced_tiling(tile.shade, served, (w, h))
    light = _reduced_tiling(tile.light, served, (w, h))
    out = out * (1.0 - shade)  # the dark outline, then the light letters, as they are pasted
    out = out * (1.0 - light) + 255.0 * light
    result: np.ndarray = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return result
