"""Images deeper than 8 bits (16-bit and float greyscale, as DICOM-derived PNGs are) brought
to 8 bits by their own range.

Pillow's own conversion to 8 bits clips: a 12-bit radiograph stored in 16 bits (values up to
4095) came out almost all white. The watermark delivers such an image scaled by its range,
and the no-forward check has to see the same picture: checked clipped, a film and a copy of
it were both near-blank and never matched."""

from __future__ import annotations

import numpy as np
from PIL import Image


def is_deep(im: Image.Image) -> bool:
    return im.mode.startswith("I") or im.mode == "F"


def to_8bit(im: Image.Image) -> Image.Image:
    """``im`` (a deep greyscale image) as 8-bit grey, its darkest value black and its
    brightest white; a flat image is black."""
    arr = np.asarray(im, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return Image.fromarray(((arr - lo) * scale + 0.5).astype(np.uint8), "L")
