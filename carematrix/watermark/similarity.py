"""How likely a leaked photo is a copy of a given original, for picking the right original out
of many before the (much dearer) :func:`trace`. Only ~128-256 px greyscale versions are
decoded (JPEG decodes at 1/8 scale), and the score is the best normalised cross-correlation
over the same scale/crop search the tracer starts with."""

from __future__ import annotations

from carematrix.watermark.align import coarse, fit_long
from carematrix.watermark.decode import open_image

_LONG = 256


def similarity(leaked: bytes, original: bytes, *, max_pixels: int = 50_000_000) -> float:
    """0..1; near 1 for a scaled/cropped/re-encoded (and marked) copy, low for other images.

    Raises :class:`MediaRejected` if either input is not a decodable image.
    """

    def small(size: tuple[int, int]) -> tuple[int, int]:
        return fit_long(size, _LONG)

    leak = open_image(leaked, max_pixels, gray=True, draft_for=small).image
    orig = open_image(original, max_pixels, gray=True, draft_for=small)
    hypotheses = coarse(leak, orig.image, orig.size, keep=1)
    if not hypotheses:
        return 0.0
    return max(0.0, min(1.0, hypotheses[0][0]))
