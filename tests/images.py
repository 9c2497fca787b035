"""Synthetic test images (nothing binary in the repository)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo(seed: int, size: tuple[int, int] = (1200, 900), fmt: str = "JPEG") -> bytes:
    """A photo-like image: gradients, shapes and sensor noise, different per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack(
        [
            128 + 90 * np.sin(x / (37 + seed) + y / 53),
            128 + 80 * np.cos(y / (29 + seed)),
            100 + 60 * np.sin((x + y) / 71),
        ],
        axis=-1,
    )
    for _ in range(12):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(20, 160)
        base[(x - cx) ** 2 + (y - cy) ** 2 < r * r] += rng.integers(-60, 60, size=3)
    base += rng.normal(0, 4, base.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(out, fmt, quality=92)
    return out.getvalue()
