"""Normalised cross-correlation of a template at every position inside an image, by FFT.

Used for the coarse search over scale and offset in alignment and similarity: at a few
hundred pixels an FFT evaluates every offset at once for the cost of a handful of passes.
"""

from __future__ import annotations

import numpy as np


def _window_sums(integral: np.ndarray, h: int, w: int) -> np.ndarray:
    sums: np.ndarray = integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]
    return sums


class Matcher:
    """Holds the image's FFT and integral images so many templates can be tried cheaply."""

    def __init__(self, image: np.ndarray) -> None:
        img = image.astype(np.float64)
        self.shape = img.shape
        img = img - img.mean()
        self._fft = np.fft.rfft2(img)
        pad = np.zeros((img.shape[0] + 1, img.shape[1] + 1))
        self._s1 = pad.copy()
        self._s1[1:, 1:] = img.cumsum(0).cumsum(1)
        self._s2 = pad
        self._s2[1:, 1:] = (img * img).cumsum(0).cumsum(1)

    def scores(self, template: np.ndarray) -> np.ndarray:
        """NCC for every placement of ``template`` fully inside the image (valid positions)."""
        height, width = self.shape
        h, w = template.shape
        if h > height or w > width or h < 2 or w < 2:
            return np.zeros((0, 0))
        t = template.astype(np.float64)
        t = t - t.mean()
        t_norm = float(np.sqrt((t * t).sum()))
        if t_norm < 1e-9:
            return np.zeros((height - h + 1, width - w + 1))
        corr = np.fft.irfft2(self._fft * np.conj(np.fft.rfft2(t, s=self.shape)), s=self.shape)
        num = corr[: height - h + 1, : width - w + 1]
        n = h * w
        s1 = _window_sums(self._s1, h, w)
        var = _window_sums(self._s2, h, w) - s1 * s1 / n
        den = np.sqrt(np.maximum(var, 0.0)) * t_norm
        out = np.zeros_like(num)
        ok = den > 1e-6 * max(1.0, float(den.max()))
        out[ok] = num[ok] / den[ok]
        return out

    def best(self, template: np.ndarray) -> tuple[float, int, int]:
        """(score, x, y) of the best placement, or (-1, 0, 0) if the template cannot fit."""
        scores = self.scores(template)
        if scores.size == 0:
            return -1.0, 0, 0
        y, x = np.unravel_index(int(np.argmax(scores)), scores.shape)
        return float(scores[y, x]), int(x), int(y)
