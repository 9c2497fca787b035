"""Per-viewer watermark cost: a 12-megapixel photo marked for one viewer, and a 320x240
'scale' thumbnail, each timed over repeated runs, next to a plain decode + re-encode of the
same photo (the floor no marking can go below).

Run: ``.venv/bin/python -m bench.watermark``.
"""

from __future__ import annotations

import io
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bench.stats import summary
from carematrix.watermark import Viewer, render_for_viewer

RUNS = 25
SIZE = (4000, 3000)
VIEWER = Viewer("张伟", "D1001", "@d1001:renhe.example", datetime(2026, 11, 25, 21, 4, tzinfo=UTC))
KEY = b"bench-key-0123456789abcdef012345"


def photo_jpeg(size: tuple[int, int] = SIZE, seed: int = 7) -> bytes:
    """Camera-like content: smooth lighting, hard-edged objects, sensor noise; JPEG q92."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = Image.fromarray(rng.integers(40, 220, (6, 8, 3), dtype=np.uint8), "RGB")
    im = small.resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(60):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(h // 40, h // 6))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x - r, y - r // 2, x + r, y + r // 2), fill=fill)
    im = im.filter(ImageFilter.GaussianBlur(2))
    noise = rng.normal(0, 5, (h, w, 1)).astype(np.int16)
    arr = np.clip(np.asarray(im, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _time(fn: Callable[[], object], runs: int) -> dict[str, float]:
    fn()  # warm caches (font, text tile)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return summary(samples)


def _reencode(data: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


_minute = itertools.count()


def _fresh_viewer(data: bytes) -> None:
    """A different minute every call, so the text tile cache never hits (worst case)."""
    n = next(_minute)
    viewer = replace(VIEWER, minute=VIEWER.minute + timedelta(minutes=n))
    render_for_viewer(data, viewer, KEY, f"m-{n}")


def measure(runs: int = RUNS) -> dict:
    """Print and return p50/p99 (ms): full-size mark (same viewer and minute, as when paging
    through a gallery, so the text tile is cached; and a new minute every run), thumbnail, and
    the decode + re-encode floor."""
    data = photo_jpeg()
    result = {
        "machine": f"{os.cpu_count()} cores",
        "input": f"{SIZE[0]}x{SIZE[1]} JPEG, {len(data) // 1024} KiB",
        "decode_reencode_only": _time(lambda: _reencode(data), runs),
        "full_12mp": _time(lambda: render_for_viewer(data, VIEWER, KEY, "m-full"), runs),
        "full_12mp_new_text_each_run": _time(lambda: _fresh_viewer(data), runs),
        "thumbnail_320x240_scale": _time(
            lambda: render_for_viewer(data, VIEWER, KEY, "m-thumb", thumbnail=(320, 240, "scale")),
            runs,
        ),
    }
    print(f"watermark benchmark ({result['machine']}, {result['input']}, {runs} runs)")
    for name, s in result.items():
        if not isinstance(s, dict):
            continue
        print(f"  {name:<28} p50 {s['p50_ms']:8.1f} ms   p99 {s['p99_ms']:8.1f} ms")
    return result


if __name__ == "__main__":
    measure()
