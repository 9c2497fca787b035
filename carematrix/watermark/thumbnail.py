"""Matrix-style thumbnails ('scale' fits inside the box, 'crop' fills it and trims the centre),
made from the unmarked original so that the marks are drawn at the thumbnail's own scale
rather than shrunk into illegibility."""

from __future__ import annotations

from PIL import Image

from carematrix.watermark.hidden import FULL, Region

MAX_THUMBNAIL_SIDE = 4096
METHODS = ("scale", "crop")


def check_request(thumbnail: tuple[int, int, str]) -> tuple[int, int, str]:
    """Validate a (width, height, method) request; a bad one is a caller bug: ValueError."""
    try:
        width, height, method = thumbnail
    except (TypeError, ValueError) as exc:
        raise ValueError("thumbnail must be (width, height, method)") from exc
    ok_int = all(isinstance(v, int) and not isinstance(v, bool) for v in (width, height))
    if not ok_int or not (1 <= width <= MAX_THUMBNAIL_SIDE and 1 <= height <= MAX_THUMBNAIL_SIDE):
        raise ValueError(f"thumbnail size must be 1..{MAX_THUMBNAIL_SIDE} pixels per side")
    if method not in METHODS:
        raise ValueError(f"thumbnail method must be one of {METHODS}")
    return width, height, method


def output_size(source: tuple[int, int], box: tuple[int, int], method: str) -> tuple[int, int]:
    """Final pixel size. 'scale' never enlarges (as Synapse); 'crop' always fills the box."""
    (sw, sh), (bw, bh) = source, box
    if method == "crop":
        return bw, bh
    factor = min(bw / sw, bh / sh, 1.0)
    return max(1, round(sw * factor)), max(1, round(sh * factor))


def decode_hint(source: tuple[int, int], box: tuple[int, int], method: str) -> tuple[int, int]:
    """The smallest decode size that still has enough pixels for this thumbnail."""
    (sw, sh), (bw, bh) = source, box
    factor = max(bw / sw, bh / sh) if method == "crop" else min(bw / sw, bh / sh)
    factor = min(factor, 1.0)
    return max(1, round(sw * factor)), max(1, round(sh * factor))


def make(image: Image.Image, box: tuple[int, int], method: str) -> tuple[Image.Image, Region]:
    """The thumbnail and the part of the original it shows, as fractions of width and height."""
    sw, sh = image.size
    size = output_size((sw, sh), box, method)
    if method == "scale":
        src: tuple[float, float, float, float] = (0.0, 0.0, float(sw), float(sh))
        region = FULL
    else:
        factor = max(size[0] / sw, size[1] / sh)
        cw, ch = size[0] / factor, size[1] / factor
        x0, y0 = (sw - cw) / 2, (sh - ch) / 2
        src = (x0, y0, x0 + cw, y0 + ch)
        region = (x0 / sw, y0 / sh, (x0 + cw) / sw, (y0 + ch) / sh)
    if size == (sw, sh) and src == (0.0, 0.0, float(sw), float(sh)):
        return image, region
    out = image.resize(size, Image.Resampling.LANCZOS, box=src, reducing_gap=2.0)
    return out, region
