"""Name which rendered copy a leaked image came from, given the original it was made from."""

from __future__ import annotations

from collections.abc import Sequence

from carematrix.watermark.align import coarse, fit_long, make_level, refine
from carematrix.watermark.decode import open_image
from carematrix.watermark.detect import residual_on_grid, z_score
from carematrix.watermark.hidden import grid_shape, pattern_signs
from carematrix.watermark.model import TraceResult

#: The leaked copy is analysed at most this big: the pattern has ~40 cells across, so more
#: pixels add time, not evidence.
WORK_LONG = 640
#: A wrong candidate's z-score is ~N(0, 1); 6 sigma is a false accusation rate of ~1e-9 per
#: candidate, and the runner-up must trail by MARGIN so two near-equal claims never "win".
Z_CONFIDENT = 6.0
MARGIN = 3.0
#: Below this correlation between leak and aligned original, the alignment is not trusted.
MIN_ALIGN_NCC = 0.6


def trace(
    leaked: bytes,
    original: bytes,
    mark_key: bytes,
    candidates: Sequence[str],
    *,
    max_pixels: int = 50_000_000,
) -> TraceResult:
    """Score every candidate ``mark_id`` against ``leaked``; see :class:`TraceResult`.

    Raises :class:`MediaRejected` if either input is not a decodable image.
    """
    if not mark_key:
        raise ValueError("mark_key must be a non-empty secret")
    leak = open_image(
        leaked, max_pixels, gray=True, draft_for=lambda s: fit_long(s, WORK_LONG)
    ).image
    leak = leak.resize(fit_long(leak.size, WORK_LONG))
    small = open_image(original, max_pixels, gray=True, draft_for=lambda s: fit_long(s, 256))
    full = small.size
    hypotheses = coarse(leak, small.image, full)
    if not hypotheses:
        return TraceResult(best=None, scores=dict.fromkeys(candidates, 0.0))
    # Decode the original once, just big enough for the finest hypothesis.
    ax_min = min(t.ax for _, t in hypotheses)
    scale = min(1.0, 1.0 / ax_min)
    orig = open_image(
        original,
        max_pixels,
        gray=True,
        draft_for=lambda s: (round(s[0] * scale) + 1, round(s[1] * scale) + 1),
    ).image
    fits = [refine(leak, orig, full, t) for _, t in hypotheses]
    fit = max(fits, key=lambda f: f.ncc)
    t = fit.transform
    aligned = fit.ncc >= MIN_ALIGN_NCC and abs(t.ax / t.ay - 1.0) < 0.05
    shape = grid_shape(*full)
    level = make_level(leak, orig, full, t, 1.0, blur=0.0)
    grid = residual_on_grid(level, fit, full, shape)
    scores = {c: z_score(grid, pattern_signs(mark_key, c, shape)) for c in candidates}
    ranked = sorted(scores.values(), reverse=True)
    top = ranked[0] if ranked else 0.0
    runner_up = ranked[1] if len(ranked) > 1 else 0.0
    confident = aligned and top >= Z_CONFIDENT and top - runner_up >= MARGIN
    best = max(scores, key=scores.__getitem__) if confident else None
    return TraceResult(best=best, scores=scores, confident=confident, aligned=aligned)
