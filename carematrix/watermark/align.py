"""Find where a leaked copy sits in its original: scale (0.25x-1x and beyond) and crop offset.

Coarse: the leaked image, shrunk to each plausible size it could have inside a ~128 px version
of the original (it covers 50-100% of the width or height), is matched at every offset by FFT
normalised cross-correlation. Fine: Gauss-Newton (Lucas-Kanade) on a small pyramid refines an
axis-aligned affine map plus gain/offset, robustly weighted so the visible text and re-encoding
artefacts do not pull it. Coordinates are continuous pixels (pixel i spans [i, i+1)); the map
goes from the leaked working image to the *full-resolution* original.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from carematrix.watermark.ncc import Matcher

COARSE_LONG = 128
#: Smallest fraction of the original's width or height a leaked copy is assumed to show.
MIN_CROP = 0.5
_SIZE_STEP = 0.985
_MIN_LEVEL_LONG = 96


@dataclass(frozen=True)
class Transform:
    """original_x = ax * leaked_x + bx, original_y = ay * leaked_y + by."""

    ax: float
    bx: float
    ay: float
    by: float


@dataclass(frozen=True)
class Fit:
    transform: Transform
    ncc: float
    gain: float
    offset: float


def fit_long(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """``size`` shrunk (never enlarged) so its longer side is at most ``long_side``."""
    factor = min(1.0, long_side / max(size))
    return max(1, round(size[0] * factor)), max(1, round(size[1] * factor))


def as_float(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def coarse(
    leaked: Image.Image, original: Image.Image, full: tuple[int, int], *, keep: int = 3
) -> list[tuple[float, Transform]]:
    """The best few (ncc, transform) hypotheses from an exhaustive low-resolution search.

    ``original`` may be any reduced decode of the original whose full size is ``full``.
    """
    base = original.resize(fit_long(original.size, COARSE_LONG), Image.Resampling.BILINEAR)
    wb, hb = base.size
    matcher = Matcher(as_float(base))
    lw, lh = leaked.size
    source = leaked.resize(fit_long(leaked.size, 2 * COARSE_LONG), Image.Resampling.BILINEAR)
    tw_max = min(wb, hb * lw / lh)
    tw_min = max(MIN_CROP * wb, MIN_CROP * hb * lw / lh)
    if tw_min > tw_max:  # aspect ratio incompatible with the crop assumption: search anyway
        tw_min = MIN_CROP * tw_max
    found: list[tuple[float, int, int, int, int]] = []
    tw = tw_max
    while tw >= tw_min - 1e-9:
        size = (round(tw), round(tw * lh / lw))
        tw *= _SIZE_STEP
        if min(size) < 6 or size[0] > wb or size[1] > hb:
            continue
        score, x, y = matcher.best(as_float(source.resize(size, Image.Resampling.BILINEAR)))
        found.append((score, size[0], size[1], x, y))
    found.sort(reverse=True)
    picked: list[tuple[float, int, int, int, int]] = []
    for cand in found:
        distinct = all(
            abs(cand[1] / p[1] - 1) > 0.04 or abs(cand[3] - p[3]) + abs(cand[4] - p[4]) > 3
            for p in picked
        )
        if distinct:
            picked.append(cand)
        if len(picked) == keep:
            break
    sx, sy = full[0] / wb, full[1] / hb
    return [
        (score, Transform(tw_ / lw * sx, x * sx, th_ / lh * sy, y * sy))
        for score, tw_, th_, x, y in picked
    ]


def bilinear(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample ``img`` at index coordinates (u along x, v along y), clamped at the borders."""
    h, w = img.shape
    u = np.clip(u, 0, w - 1)
    v = np.clip(v, 0, h - 1)
    x0 = np.minimum(u.astype(np.intp), max(w - 2, 0))
    y0 = np.minimum(v.astype(np.intp), max(h - 2, 0))
    fx, fy = u - x0, v - y0
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    sampled: np.ndarray = top * (1 - fy) + bottom * fy
    return sampled


@dataclass
class Level:
    """One pyramid level: leaked image, original at matching resolution, and the index maps."""

    leaked: np.ndarray
    original: np.ndarray
    #: leaked working coordinate = level index centre / lam
    lam: tuple[float, float]
    #: original level index = full-res coordinate * rho - 0.5
    rho: tuple[float, float]


def make_level(
    leaked: Image.Image,
    original: Image.Image,
    full: tuple[int, int],
    t: Transform,
    lam: float,
    blur: float,
) -> Level:
    lsize = (max(8, round(leaked.size[0] * lam)), max(8, round(leaked.size[1] * lam)))
    lev_leaked = leaked.resize(lsize, Image.Resampling.BILINEAR) if lam < 1 else leaked
    # Original at the same pixel size as this leaked level, but never above what was decoded.
    factor = min(lam / t.ax, original.size[0] / full[0])
    osize = (max(8, round(full[0] * factor)), max(8, round(full[1] * factor)))
    lev_original = original.resize(osize, Image.Resampling.BILINEAR)
    if blur > 0:
        lev_leaked = lev_leaked.filter(ImageFilter.GaussianBlur(blur))
        lev_original = lev_original.filter(ImageFilter.GaussianBlur(blur))
    return Level(
        leaked=as_float(lev_leaked),
        original=as_float(lev_original),
        lam=(lsize[0] / leaked.size[0], lsize[1] / leaked.size[1]),
        rho=(osize[0] / full[0], osize[1] / full[1]),
    )


def sample_points(level: Level, t: Transform, stride: int = 1) -> tuple[np.ndarray, ...]:
    """Leaked level pixel centres (as working coordinates) and where they fall in the original
    level (index coordinates) and in the full-resolution original."""
    h, w = level.leaked.shape
    xs = (np.arange(0, w, stride) + 0.5) / level.lam[0]
    ys = (np.arange(0, h, stride) + 0.5) / level.lam[1]
    uf = t.ax * xs + t.bx
    vf = t.ay * ys + t.by
    return xs, ys, uf, vf


def _lk(level: Level, t: Transform, iters: int) -> Fit:
    """Robust Gauss-Newton on (ax, bx, ay, by, gain, offset) at one level."""
    orig = level.original
    gy, gx = np.gradient(orig)
    ho, wo = orig.shape
    stride = max(1, int(np.sqrt(level.leaked.size / 150_000)))
    target = level.leaked[::stride, ::stride]
    gain, offset = 1.0, 0.0
    params = np.array([t.ax, t.bx, t.ay, t.by])
    for _ in range(iters):
        tr = Transform(*params)
        xs, ys, uf, vf = sample_points(level, tr, stride)
        u = uf * level.rho[0] - 0.5
        v = vf * level.rho[1] - 0.5
        uu, vv = np.meshgrid(u, v)
        xx, yy = np.meshgrid(xs, ys)
        inside = (uu >= 0) & (uu <= wo - 1) & (vv >= 0) & (vv <= ho - 1)
        if inside.sum() < 64:
            break
        uu, vv, xx, yy, tgt = uu[inside], vv[inside], xx[inside], yy[inside], target[inside]
        o = bilinear(orig, uu, vv)
        ox = bilinear(gx, uu, vv) * level.rho[0]
        oy = bilinear(gy, uu, vv) * level.rho[1]
        r = tgt - gain * o - offset
        sigma = 1.4826 * float(np.median(np.abs(r - np.median(r)))) + 1.0
        k = 2.0 * sigma
        weight = np.minimum(1.0, k / np.maximum(np.abs(r), 1e-9))
        xm, ym = float(xx.mean()), float(yy.mean())
        # Centred coordinates keep the normal equations well conditioned.
        jac = np.stack(
            [
                gain * ox * (xx - xm),
                gain * ox,
                gain * oy * (yy - ym),
                gain * oy,
                o,
                np.ones_like(o),
            ],
            axis=1,
        )
        jw = jac * weight[:, None]
        normal = jac.T @ jw
        normal += np.eye(6) * 1e-6 * np.trace(normal) / 6
        step = np.linalg.solve(normal, jw.T @ r)
        # Back from centred to plain parameters: b absorbs a * mean.
        d_ax, d_bx, d_ay, d_by = step[0], step[1] - step[0] * xm, step[2], step[3] - step[2] * ym
        params += np.array([d_ax, d_bx, d_ay, d_by])
        gain += step[4]
        offset += step[5]
        moved = abs(step[1]) + abs(step[3]) + abs(step[0]) * xm + abs(step[2]) * ym
        if moved < 0.01 * t.ax:
            break
    final = Transform(*params)
    return Fit(final, _ncc(level, final), gain, offset)


def _ncc(level: Level, t: Transform) -> float:
    xs, ys, uf, vf = sample_points(level, t, max(1, int(np.sqrt(level.leaked.size / 60_000))))
    u = uf * level.rho[0] - 0.5
    v = vf * level.rho[1] - 0.5
    uu, vv = np.meshgrid(u, v)
    ho, wo = level.original.shape
    inside = (uu >= 0) & (uu <= wo - 1) & (vv >= 0) & (vv <= ho - 1)
    if inside.mean() < 0.5:
        return 0.0
    stride = max(1, int(np.sqrt(level.leaked.size / 60_000)))
    a = level.leaked[::stride, ::stride][inside]
    b = bilinear(level.original, uu[inside], vv[inside])
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def refine(
    leaked: Image.Image, original: Image.Image, full: tuple[int, int], start: Transform
) -> Fit:
    """Refine ``start`` coarse-to-fine; the last level is the leaked image at its own size."""
    lams = [1.0]
    while max(leaked.size) * lams[0] / 2 >= _MIN_LEVEL_LONG and len(lams) < 3:
        lams.insert(0, lams[0] / 2)
    t = start
    fit = Fit(t, 0.0, 1.0, 0.0)
    for i, lam in enumerate(lams):
        last = i == len(lams) - 1
        level = make_level(leaked, original, full, t, lam, blur=0.7 if last else 1.0)
        fit = _lk(level, t, iters=8 if last else 12)
        t = fit.transform
    return fit
