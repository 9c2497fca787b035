"""The hidden mark: a keyed +/-1 pattern on a coarse grid laid over the *original's* frame.

Why this shape:
- Coarse (about 40 cells along the long side, whatever the resolution) so that downscaling,
  re-encoding and screenshots, which destroy fine detail, leave it intact.
- Defined in normalised coordinates of the full-resolution, upright original, so a thumbnail,
  a crop thumbnail and the full image all carry the same pattern at the same place in the
  scene, and the tracer only needs the original to know where to look.
- Derived from HMAC-SHA256(mark_key, mark_id) and expanded with SHA-256 rather than a numpy
  RNG, so a pattern written today is reproducible by any later version of the libraries.
- Independent +/-1 cells make the detection statistic's null distribution analytic (see
  :mod:`carematrix.watermark.detect`).
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
from PIL import Image, ImageChops

#: Grid cells along the longer side of the original.
CELLS_LONG = 40
#: Grey levels added or subtracted at a cell centre: invisible in photos, survives JPEG q70.
AMPLITUDE = 3
#: On small outputs (thumbnails) cells are only a few pixels wide and flat areas show a faint
#: mottle at full amplitude; there the pattern is written more gently.
SMALL_CELL_PX = 24
SMALL_AMPLITUDE = 2
_MAX_REDUCTION = 4

Region = tuple[float, float, float, float]
FULL: Region = (0.0, 0.0, 1.0, 1.0)


def grid_shape(width: int, height: int) -> tuple[int, int]:
    """(columns, rows) of the pattern grid for an original of this size."""
    short = max(4, round(CELLS_LONG * min(width, height) / max(width, height)))
    return (CELLS_LONG, short) if width >= height else (short, CELLS_LONG)


def pattern_signs(mark_key: bytes, mark_id: str, shape: tuple[int, int]) -> np.ndarray:
    """The +/-1 grid (rows, columns) as int8 for one mark id."""
    if not mark_key:
        raise ValueError("mark_key must be a non-empty secret")
    cols, rows = shape
    seed = hmac.new(mark_key, mark_id.encode("utf-8"), hashlib.sha256).digest()
    blocks = -(-(cols * rows) // 256)
    stream = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(blocks))
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8))[: cols * rows]
    return (bits.astype(np.int8) * 2 - 1).reshape(rows, cols)


def pattern_layer(
    signs: np.ndarray, size: tuple[int, int], region: Region = FULL, *, served: tuple[int, int] | None = None
) -> Image.Image:
    """The pattern for an output of ``size`` pixels showing ``region`` (fractions of the
    original) as an ``L`` image centred on 128, upscaled bilinearly by Pillow in C: cell
    centres carry +/-AMPLITUDE and the surface between them is smooth, so no block edges show.

    ``served``: the size of the output this one stands for, when drawn reduced (the
    amplitude is the one chosen for that output)."""
    rows, cols = signs.shape
    box = (region[0] * cols, region[1] * rows, region[2] * cols, region[3] * rows)
    chosen_for = served or size
    cell = min(chosen_for[0] / max(1e-9, box[2] - box[0]), chosen_for[1] / max(1e-9, box[3] - box[1]))
    amplitude = AMPLITUDE if cell >= SMALL_CELL_PX else SMALL_AMPLITUDE
    grid = Image.fromarray((128 + amplitude * signs.astype(np.int16)).astype(np.uint8), "L")
    # Interpolate at up to 1/4 resolution and blow up by pixel repetition: four times less
    # work on a 12 MP image, and with at least 16 px per cell at the reduced size neighbouring
    # blocks differ by under one grey level, i.e. not at all after rounding.
    factor = int(max(1, min(_MAX_REDUCTION, cell // 16)))
    if factor == 1:
        return grid.resize(size, Image.Resampling.BILINEAR, box=box)
    reduced = (-(-size[0] // factor), -(-size[1] // factor))
    layer = grid.resize(reduced, Image.Resampling.BILINEAR, box=box)
    return layer.resize(size, Image.Resampling.NEAREST)


def add_layer(image: Image.Image, layer: Image.Image) -> Image.Image:
    """``image + layer - 128`` with clipping, on every colour band, in one C pass per band."""
    if image.mode == "L":
        return ImageChops.add(image, layer, 1.0, -128)
    if image.mode == "RGB":
        return ImageChops.add(image, Image.merge("RGB", (layer, layer, layer)), 1.0, -128)
    raise ValueError(f"unexpected mode {image.mode}")
