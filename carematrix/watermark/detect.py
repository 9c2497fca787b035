"""Score candidate hidden patterns against the residual (leaked minus aligned original).

The residual is projected onto the pattern grid with the adjoint of the bilinear upsampling
that wrote the pattern (a "splat"), giving one number R_j per grid cell; a candidate's score is
z = sum_j s_j R_j / ||R||. Because a wrong candidate's signs s_j are independent fair +/-1
values, z is then zero-mean with unit variance whatever the image content, so one threshold
works for every photo without calibration. Pixels where the residual is large (the visible
text, which differs per viewer, and misregistered edges) are left out: the hidden pattern is
only a few grey levels, so anything much larger is not it.
"""

from __future__ import annotations

import numpy as np

from carematrix.watermark.align import Fit, Level, bilinear, sample_points

#: Residuals beyond this many grey levels are text or misregistration, not the pattern.
CLIP = 9.0


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def residual_on_grid(
    level: Level, fit: Fit, full: tuple[int, int], shape: tuple[int, int]
) -> np.ndarray:
    """R (rows, cols): the masked residual splatted onto the pattern grid of ``shape``."""
    cols, rows = shape
    t = fit.transform
    xs, ys, uf, vf = sample_points(level, t)
    u = uf * level.rho[0] - 0.5
    v = vf * level.rho[1] - 0.5
    uu, vv = np.meshgrid(u, v)
    ho, wo = level.original.shape
    inside = (uu >= 0) & (uu <= wo - 1) & (vv >= 0) & (vv <= ho - 1)
    predicted = fit.gain * bilinear(level.original, uu, vv) + fit.offset
    resid = level.leaked - predicted
    resid -= np.median(resid[inside]) if inside.any() else 0.0
    keep = inside & ~_dilate(np.abs(resid) > CLIP)
    # Grid coordinates of every sample: cell centres sit at (j + 0.5) / cols of the width.
    gx = np.clip(uf / full[0] * cols - 0.5, 0, cols - 1)
    gy = np.clip(vf / full[1] * rows - 0.5, 0, rows - 1)
    x0 = np.minimum(gx.astype(np.intp), max(cols - 2, 0))
    y0 = np.minimum(gy.astype(np.intp), max(rows - 2, 0))
    fx, fy = gx - x0, gy - y0
    x1, y1 = np.minimum(x0 + 1, cols - 1), np.minimum(y0 + 1, rows - 1)
    values = np.where(keep, resid, 0.0)
    grid = np.zeros(rows * cols)
    for yi, wy in ((y0, 1 - fy), (y1, fy)):
        for xi, wx in ((x0, 1 - fx), (x1, fx)):
            index = (yi[:, None] * cols + xi[None, :]).ravel()
            weights = (wy[:, None] * wx[None, :] * values).ravel()
            grid += np.bincount(index, weights=weights, minlength=rows * cols)
    return grid.reshape(rows, cols)


def z_score(grid: np.ndarray, signs: np.ndarray) -> float:
    norm = float(np.sqrt((grid * grid).sum()))
    return float((grid * signs).sum() / norm) if norm > 0 else 0.0
