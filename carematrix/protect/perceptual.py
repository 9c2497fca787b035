"""Perceptual image match for no-forward: is this image a copy of a protected one?

A copy arrives re-encoded, resized, cropped, in greyscale or pasted into a screenshot, so
neither the bytes nor one global hash of the picture survive. What survives is the local
structure: corners and blobs, at positions that keep their arrangement under scaling and
translation. So an image is described by up to :data:`STORED_POINTS` local features
(:func:`image_features`):

1. decoded, converted to grey (colour is gone after greyscale conversion, so it is never
   used), and resampled so its longer side is :data:`WORK_SIDE` pixels;
2. scale-space keypoints (OpenCV's SIFT detector: position and scale, which follow the
   content when it is resized), with the descriptor computed *upright*: the transforms we
   cover do not rotate, and a fixed orientation is steadier than an estimated one;
3. each descriptor reduced to :data:`BITS` bits by the signs of fixed random projections
   of its centred RootSIFT vector, so similar patches have a small Hamming distance;
4. for a protected image, the strongest points spread over a grid of cells, so a crop of
   any edge leaves most of them.

Finding the protected image a candidate may copy (:func:`bucket_keys`): every feature falls
into :data:`TABLES` hash buckets, each the value of a fixed subset of :data:`BUCKET_BITS` of
its bits (locality-sensitive hashing, bit sampling). A feature of a copy shares at least one
bucket with its original feature with high probability, an unrelated one rarely; the store
keeps one index row per bucket of each protected feature, and a candidate's lookup probes its
own buckets; protected images with :data:`MIN_BUCKET_HITS` hits are verified.

Verification (:func:`verify`), which alone decides, and which has to refuse near-identical
images of different patients (two chest films of the same anatomy, two reports on one form):

1. *matches*: each protected feature's nearest candidate feature within
   :data:`MATCH_DISTANCE` bits, when clearly nearer than the second nearest;
2. *geometry*: one scale-and-translation maps the protected image onto the candidate; it is
   found by sampling pairs of matches and must carry :data:`MIN_INLIERS` of them within
   :data:`INLIER_TOLERANCE` of the work size;
3. *dense agreement*: with that mapping, the candidate's descriptor is computed at the
   mapped position and scale of **every** protected feature that lands inside the candidate
   (not only the ones the detector happened to find again). A copy agrees almost
   everywhere; another patient's film agrees only where the shared anatomy is, and disagrees
   wherever that patient differs. At least :data:`MIN_AGREEMENT` of the checked features
   must agree (within :data:`AGREE_DISTANCE` bits).

Everything is a pure function of bytes or arrays; no database, no Synapse.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

from carematrix.image_depth import is_deep, to_8bit

WORK_SIDE = 512  # longer side of the grey image every feature is computed on
CROP_SIDE = 360  # a second, smaller view of a candidate (see candidate_views)
MAX_PIXELS = 50_000_000  # refuse to decode more (a decompression bomb), as the watermark does
BITS = 64
STORED_POINTS = 160  # features kept for a protected image
INDEXED_POINTS = 40  # of them, the first (spread over the grid) are indexed for lookup
SHORTLIST = 8  # protected images verified per lookup, best ranked first
COMMON_BUCKET = 32  # a bucket holding more protected images than this is not used for lookup
CANDIDATE_POINTS = 600  # features computed for an image being checked
GRID = 4  # protected features are chosen per cell of a GRID x GRID grid
TABLES = 3  # was 4 until schema migration 6 removed table 3's index rows (docs/benchmarks.md)
BUCKET_BITS = 24
LOOKUP_POINTS = 100  # a candidate probes the buckets of its strongest features, per view
SCREEN_LOOKUP_POINTS = 250  # in its twice-work-size view, where a screenshot's window crowds them
MIN_BUCKET_HITS = 3
MATCH_DISTANCE = 14
MATCH_MARGIN = 3
MIN_INLIERS = 8
INLIER_TOLERANCE = 0.012  # of WORK_SIDE in the candidate's work image
AGREE_DISTANCE = 14
MIN_AGREEMENT = 0.55
MIN_CHECKED = 20
SCALE_RANGE = (0.15, 6.0)

_SEED = 0x5EED_F00D
_RNG = np.random.default_rng(_SEED)
_PROJECTION = _RNG.standard_normal((BITS, 128)).astype(np.float32)
_BUCKET_BIT_SETS = [np.sort(_RNG.choice(BITS, BUCKET_BITS, replace=False)) for _ in range(TABLES)]
_BUCKET_WEIGHTS = np.zeros((BITS, TABLES), np.int64)  # bit b of a feature -> its place in each key
for _table, _chosen in enumerate(_BUCKET_BIT_SETS):
    _BUCKET_WEIGHTS[_chosen, _table] = 1 << np.arange(BUCKET_BITS, dtype=np.int64)
_TABLE_TAGS = np.arange(TABLES, dtype=np.int64) << BUCKET_BITS
_SIFT = cv2.SIFT_create(  # type: ignore[attr-defined]
    nfeatures=CANDIDATE_POINTS, contrastThreshold=0.03)


class ImageUnreadable(ValueError):
    """Not an image we can decode safely (corrupt, unsupported, too many pixels)."""


@dataclass(frozen=True)
class Features:
    """Local features of one image in its work frame (longer side :data:`WORK_SIDE`).

    ``points``: float32 (n, 3) of x, y, keypoint size; ``bits``: uint64 (n,) descriptors;
    ``grey``: the work image itself for a candidate (dense verification computes
    descriptors on it), None for stored features.
    """

    points: np.ndarray
    bits: np.ndarray
    width: int
    height: int
    grey: np.ndarray | None = None
    native: int = 0  # longer side of the image as decoded, before resampling to work size

    def __len__(self) -> int:
        return int(self.bits.shape[0])

    @functools.cached_property
    def grey_float(self) -> np.ndarray | None:
        """The work image as float32, made once for every pixel comparison with this view."""
        return None if self.grey is None else self.grey.astype(np.float32)


@dataclass(frozen=True)
class Verdict:
    """Why a candidate is (or is not) a copy: the numbers a reviewer would look at."""

    is_copy: bool
    matches: int
    inliers: int
    checked: int
    agreeing: int
    scale: float
    tx: float = 0.0
    ty: float = 0.0

    @property
    def agreement(self) -> float:
        return self.agreeing / self.checked if self.checked else 0.0


def load_grey(data: bytes, side: int = 2 * WORK_SIDE) -> Image.Image:
    """The image in grey, decoded at no less than ``side`` on its longer side when it has
    that many pixels (JPEG is decoded reduced, far cheaper); raises :class:`ImageUnreadable`
    for anything unsafe or unreadable. Transparency is flattened on white, like a viewer."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BytesIO(data))
            if im.width * im.height > MAX_PIXELS:
                raise ImageUnreadable(f"{im.width}x{im.height} pixels is too many to check")
            if isinstance(im, ImageFile.ImageFile) and im.format == "JPEG":
                im.draft("L", (side, side))
            im.seek(0)
            im = ImageOps.exif_transpose(im)
            if is_deep(im):
                im = to_8bit(im)  # by its range, as the watermark delivers it: not clipped
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                flat = Image.new("RGB", im.size, (255, 255, 255))
                flat.paste(rgba, mask=rgba.getchannel("A"))
                im = flat
            grey = im.convert("L")
    except ImageUnreadable:
        raise
    except Exception as exc:  # Pillow raises many kinds for hostile input
        raise ImageUnreadable(f"not a readable image: {exc}") from exc
    if min(grey.size) < 8:
        raise ImageUnreadable("image too small to compare")
    return grey


def work_image(grey: Image.Image, side: int = WORK_SIDE) -> np.ndarray:
    """``grey`` resampled so its longer side is ``side`` (up or down), as uint8."""
    factor = side / max(grey.size)
    size = (max(1, round(grey.width * factor)), max(1, round(grey.height * factor)))
    method = Image.Resampling.LANCZOS if factor < 1 else Image.Resampling.BICUBIC
    return np.asarray(grey.resize(size, method), dtype=np.uint8)


def decode_grey(data: bytes, side: int = WORK_SIDE) -> np.ndarray:
    """The work image of encoded bytes (longer side ``side``)."""
    return work_image(load_grey(data, side), side)


def _binarise(descriptors: np.ndarray) -> np.ndarray:
    """SIFT descriptors -> uint64 signs of random projections of centred RootSIFT."""
    d = descriptors.astype(np.float32)
    d /= d.sum(axis=1, keepdims=True) + 1e-7
    d = np.sqrt(d)
    d -= d.mean(axis=1, keepdims=True)
    signs = (d @ _PROJECTION.T) > 0
    weights = np.uint64(1) << np.arange(BITS, dtype=np.uint64)
    bits: np.ndarray = (signs.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return bits


def _describe(grey: np.ndarray, keypoints: list[cv2.KeyPoint]) -> tuple[np.ndarray, np.ndarray]:
    """Upright descriptors at ``keypoints``: (points (n, 3), bits (n,)); points that OpenCV
    drops (too near the border) are dropped from both."""
    upright = [cv2.KeyPoint(k.pt[0], k.pt[1], k.size, 0.0, k.response, k.octave) for k in keypoints]
    upright, descriptors = _SIFT.compute(grey, upright)
    if descriptors is None or not upright:
        return np.zeros((0, 3), np.float32), np.zeros(0, np.uint64)
    points = np.array([(k.pt[0], k.pt[1], k.size) for k in upright], dtype=np.float32)
    return points, _binarise(descriptors)


def _detect(grey: np.ndarray) -> list[cv2.KeyPoint]:
    """Keypoints, strongest first, one per position (the detector repeats a point once per
    orientation it finds; upright description makes those duplicates)."""
    found = sorted(_SIFT.detect(grey, None), key=lambda k: -k.response)
    seen: set[tuple[int, int, int]] = set()
    out = []
    for k in found:
        mark = (round(k.pt[0] * 2), round(k.pt[1] * 2), round(k.size * 2))
        if mark not in seen:
            seen.add(mark)
            out.append(k)
    return out


def _spread(keypoints: list[cv2.KeyPoint], width: int, height: int, limit: int) -> list[cv2.KeyPoint]:
    """At most ``limit`` keypoints, taken strongest-first from each grid cell in turn, so
    every part of the image keeps some (a crop must leave features to match)."""
    cells: dict[tuple[int, int], list[cv2.KeyPoint]] = {}
    for k in keypoints:
        cell = (min(GRID - 1, int(k.pt[0] * GRID / width)), min(GRID - 1, int(k.pt[1] * GRID / height)))
        cells.setdefault(cell, []).append(k)
    chosen: list[cv2.KeyPoint] = []
    depth = 0
    while len(chosen) < limit and any(len(c) > depth for c in cells.values()):
        for cell in sorted(cells):
            if depth < len(cells[cell]) and len(chosen) < limit:
                chosen.append(cells[cell][depth])
        depth += 1
    return chosen


def features_of(grey: np.ndarray, *, protected: bool, native: int = 0) -> Features:
    """Features of a decoded work image (see the module docstring); ``native`` is the
    longer side the image had before resampling (0: the work size)."""
    keypoints = _detect(grey)
    height, width = grey.shape
    if protected:
        keypoints = _spread(keypoints, width, height, STORED_POINTS)
    points, bits = _describe(grey, keypoints)
    return Features(points, bits, width, height, None if protected else grey, native or max(width, height))


def protected_features(data: bytes) -> Features:
    """Features kept for a protected image; raises :class:`ImageUnreadable`."""
    return features_of(decode_grey(data), protected=True)


def candidate_views(data: bytes) -> list[Features]:
    """The features an image being checked is compared with, at three work sizes: at
    :data:`WORK_SIDE`; at :data:`CROP_SIDE`, where the content of a crop (enlarged by up to
    1 / 0.6 when it is brought to the work size) is back near the protected image's own
    scale (matching across a large scale change is weak for small print); and, for an image
    large enough to be a screenshot (longer side at least 1.5 x WORK_SIDE), at twice the
    work size, where a protected image shown on a third of the screen keeps its detail.
    Raises :class:`ImageUnreadable`."""
    grey = load_grey(data)
    native = max(grey.size)
    sides = [WORK_SIDE, CROP_SIDE] + ([2 * WORK_SIDE] if native >= 1.5 * WORK_SIDE else [])
    return [features_of(work_image(grey, side), protected=False, native=native) for side in sides]


# ---------------------------------------------------------------- finding candidates


def bucket_keys(bits: np.ndarray) -> np.ndarray:
    """The LSH bucket of each feature in each table, as int64 keys (table in the top bits,
    so one index serves all tables): shape (n * TABLES,), unique. Table t's key gathers the
    bits ``_BUCKET_BIT_SETS[t]`` of a feature, the first of them lowest: one product of the
    features' bit matrix with :data:`_BUCKET_WEIGHTS` (a loop over the 96 chosen bits took
    more of a check than the index probe it feeds)."""
    if bits.size == 0:
        return np.zeros(0, np.int64)
    matrix = ((bits[:, None] >> np.arange(BITS, dtype=np.uint64)) & np.uint64(1)).astype(np.int64)
    keys = (matrix @ _BUCKET_WEIGHTS) | _TABLE_TAGS
    return np.unique(keys.ravel())


def ranked(rows: Iterable[tuple[int, int]] | np.ndarray) -> list[tuple[int, float]]:
    """Protected images worth verifying, best first, with their score, from the (bucket,
    image) rows the candidate's buckets returned (pairs, or an (n, 2) integer array).

    An image needs :data:`MIN_BUCKET_HITS` shared buckets; it is ranked by the sum of
    1 / (images in the bucket) over them, then by its number. A bucket that many protected
    images share (the grid of ECG paper, the rules of a form, a film's edge) says little
    about which one was copied; a bucket only one image has says much. Ranking by plain hit
    counts let fifty ECGs crowd the one that was copied out of the shortlist."""
    pairs = np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        return []
    _, in_bucket, per_bucket = np.unique(pairs[:, 0], return_inverse=True, return_counts=True)
    images, of_image, hits = np.unique(pairs[:, 1], return_inverse=True, return_counts=True)
    score = np.bincount(of_image, weights=1.0 / per_bucket[in_bucket], minlength=len(images))
    kept = np.flatnonzero(hits >= MIN_BUCKET_HITS)
    order = kept[np.lexsort((images[kept], -score[kept]))]
    return [(int(images[i]), float(score[i])) for i in order]


def shortlist(rows: Iterable[tuple[int, int]]) -> list[int]:
    """The first :data:`SHORTLIST` of :func:`ranked`."""
    return [image for image, _ in ranked(rows)[:SHORTLIST]]


def indexed_keys(stored: Features) -> np.ndarray:
    """The bucket keys a protected image is indexed under (its first INDEXED_POINTS)."""
    return bucket_keys(stored.bits[:INDEXED_POINTS])


def lookup_keys(views: list[Features]) -> np.ndarray:
    """The bucket keys a candidate probes: its :data:`LOOKUP_POINTS` strongest features of
    each view (features are kept strongest first), and :data:`SCREEN_LOOKUP_POINTS` of the
    view at twice the work size. Copies' features that correspond to an indexed protected
    one are nearly always among them; the rest of a screenshot (the window around the image)
    mostly is not, but it takes many of a screenshot's strongest places, so that view needs
    more (measured: 100 there found 28 of 50 chest films in screenshots, 250 found 47).
    Every key probed costs an index descent, so the other views keep to 100."""
    if not views:
        return np.zeros(0, np.int64)
    return np.unique(np.concatenate([
        bucket_keys(v.bits[: SCREEN_LOOKUP_POINTS if max(v.width, v.height) > WORK_SIDE else LOOKUP_POINTS])
        for v in views
    ]))


# ---------------------------------------------------------------- verification


def _popcount(x: np.ndarray) -> np.ndarray:
    counts: np.ndarray = np.bitwise_count(x).astype(np.int32)
    return counts


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances, shape (len(a), len(b)), as uint8 (at most :data:`BITS`;
    the small type keeps the row minima in :func:`_matches` cheap)."""
    dist: np.ndarray = np.bitwise_count(a[:, None] ^ b[None, :])
    return dist


def _matches(stored: Features, candidate: Features) -> tuple[np.ndarray, np.ndarray]:
    """(stored index, candidate index) of unambiguous near matches."""
    if len(stored) == 0 or len(candidate) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    dist = hamming(stored.bits, candidate.bits)
    # when the nearest is tied, the margin is 0 and the feature is dropped, so which of
    # the tied ones argmin names does not matter
    nearest = dist.argmin(axis=1)
    rows = np.arange(len(stored))
    best = dist[rows, nearest].astype(np.int16)
    # the second nearest: the least distance once the nearest is set aside (a partition of
    # every row for its two least was most of a shortlisted image's verification)
    dist[rows, nearest] = np.iinfo(dist.dtype).max
    second = dist.min(axis=1).astype(np.int16)
    keep = (best <= MATCH_DISTANCE) & (second - best >= MATCH_MARGIN)
    return rows[keep], nearest[keep]


@functools.lru_cache(maxsize=1024)
def _sampled_pairs(n: int) -> np.ndarray:
    """The pairs (i, j), i < j, of n matches that :func:`_fit` tries: all of them, or 400
    drawn by a generator seeded with n, so the same matches always give the same fit. Kept
    per n (drawing them was nearly half of a fit, and a check fits up to 24 times)."""
    pairs = np.stack(np.triu_indices(n, 1), axis=1)  # every (i, j) with i < j, row by row
    if len(pairs) > 400:
        pairs = pairs[np.random.default_rng(n).choice(len(pairs), 400, replace=False)]
    pairs.setflags(write=False)
    return pairs


def _lengths(d: np.ndarray) -> np.ndarray:
    """Euclidean length of each row of (m, 2) ``d``, as ``np.linalg.norm(d, axis=1)`` computes
    it, without its checks."""
    lengths: np.ndarray = np.sqrt(np.add.reduce(d * d, axis=1))
    return lengths


def _fit(p: np.ndarray, q: np.ndarray, tolerance: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Best scale-and-translation q ~ s * p + t over sampled pairs of matches: (s, t, inlier mask)."""
    n = len(p)
    pairs = _sampled_pairs(n)
    dp = p[pairs[:, 1]] - p[pairs[:, 0]]
    dq = q[pairs[:, 1]] - q[pairs[:, 0]]
    lp = _lengths(dp)
    lq = _lengths(dq)
    ok = (lp > 8) & (lq > 4)
    if not ok.any():
        return 1.0, np.zeros(2), np.zeros(n, bool)
    scale = np.where(ok, lq / np.maximum(lp, 1e-6), 0)
    # the two displacement vectors must also point the same way: no rotation, no mirror
    aligned = (dp * dq).sum(axis=1) > 0.98 * lp * lq
    ok &= aligned & (scale >= SCALE_RANGE[0]) & (scale <= SCALE_RANGE[1])
    if not ok.any():
        return 1.0, np.zeros(2), np.zeros(n, bool)
    s = scale[ok]
    t = q[pairs[ok, 0]] - s[:, None] * p[pairs[ok, 0]]
    # each hypothesis's squared error at every match, x and y apart (a sum over a last axis of
    # two was most of the fit's time)
    dx = s[:, None] * p[None, :, 0] + t[:, 0, None] - q[None, :, 0]
    dy = s[:, None] * p[None, :, 1] + t[:, 1, None] - q[None, :, 1]
    inliers = dx * dx + dy * dy <= tolerance * tolerance
    best = int(np.argmax(inliers.sum(axis=1)))
    mask = inliers[best]
    # refine on the inliers (least squares for s and t)
    s_out, t_out = float(s[best]), t[best]
    if mask.sum() >= 2:
        s_fit, t_fit = _least_squares(p[mask], q[mask])
        residual = _lengths(s_fit * p + t_fit - q)
        refined = residual <= tolerance
        if refined.sum() >= mask.sum() and SCALE_RANGE[0] <= s_fit <= SCALE_RANGE[1]:
            s_out, t_out, mask = s_fit, t_fit, refined
    # The mapping the pixels are compared with: the estimate of one pair, or of every match
    # within the tolerance, can be 1-2 % off in scale (a copy's view with the watermark's
    # letters gives many near-misses), and that misregisters a whole copy (worst block 0.49
    # where the right mapping gives 0.005). So it is fitted again on the matches within half
    # the tolerance of it, a few times; the inliers, which accept the geometry, stay as found.
    for _ in range(3):
        close = _lengths(s_out * p + t_out - q) <= tolerance / 2
        if close.sum() < MIN_INLIERS:
            break
        s_fit, t_fit = _least_squares(p[close], q[close])
        if not SCALE_RANGE[0] <= s_fit <= SCALE_RANGE[1]:
            break
        s_out, t_out = s_fit, t_fit
    return s_out, t_out, mask


def _least_squares(p: np.ndarray, q: np.ndarray) -> tuple[float, np.ndarray]:
    """The scale and translation that best map points ``p`` onto ``q`` (least squares)."""
    pc, qc = p - p.mean(0), q - q.mean(0)
    s_fit = float((pc * qc).sum() / max((pc * pc).sum(), 1e-6))
    t_fit: np.ndarray = q.mean(0) - s_fit * p.mean(0)
    return s_fit, t_fit


def _octave(size: float) -> int:
    """OpenCV's packed octave/layer for a keypoint of ``size`` found by the detector, so a
    descriptor computed at a point we choose uses the pyramid image the detector would have
    (SIFT sizes are 2 * 1.6 * 2**(octave + layer / 3), octave -1 the doubled image)."""
    v = math.log2(max(size, 1e-3) / 3.2)
    octave = max(-1, math.floor(v))
    layer = min(3, max(0, round(3 * (v - octave))))
    return (octave & 255) | (layer << 8)


def verify(stored: Features, candidate: Features, *, dense: bool = True) -> Verdict:
    """Whether ``candidate`` (with its work image) copies the protected ``stored`` by its
    features: near matches, then one scale and translation carrying enough of them, then
    (``dense``) the agreement of the candidate's descriptors at every mapped protected
    feature. Without ``dense`` the verdict is the geometry's alone (the pixel comparison
    decides; describing the candidate at chosen points costs a whole scale-space pyramid)."""
    none = Verdict(False, 0, 0, 0, 0, 0.0)
    si, ci = _matches(stored, candidate)
    if len(si) < MIN_INLIERS or candidate.grey is None:
        return Verdict(False, len(si), 0, 0, 0, 0.0) if len(si) else none
    p = stored.points[si, :2]
    q = candidate.points[ci, :2]
    s, t, mask = _fit(p, q, INLIER_TOLERANCE * WORK_SIDE)
    inliers = int(mask.sum())
    if inliers < MIN_INLIERS or not SCALE_RANGE[0] <= s <= SCALE_RANGE[1]:
        return Verdict(False, len(si), inliers, 0, 0, s)
    if not dense:
        return Verdict(True, len(si), inliers, 0, 0, s, float(t[0]), float(t[1]))
    # dense agreement: describe the candidate at every mapped protected point inside it
    mapped = stored.points[:, :2] * s + t
    size = stored.points[:, 2] * s
    margin = size * 0.75 + 2
    inside = (
        (mapped[:, 0] >= margin) & (mapped[:, 1] >= margin)
        & (mapped[:, 0] < candidate.width - margin) & (mapped[:, 1] < candidate.height - margin)
        & (size >= 2.0)
    )
    idx = np.flatnonzero(inside)
    # an image with little texture has few features at all: then most of them must agree
    needed = min(MIN_CHECKED, max(MIN_INLIERS, int(0.7 * len(stored))))
    if len(idx) < needed:
        return Verdict(False, len(si), inliers, len(idx), 0, s)
    keypoints = [
        cv2.KeyPoint(float(mapped[i, 0]), float(mapped[i, 1]), float(size[i]), 0.0, 0.0, _octave(float(size[i])), int(i))
        for i in idx
    ]
    keypoints, descriptors = _SIFT.compute(candidate.grey, keypoints)
    if descriptors is None or not keypoints:
        return Verdict(False, len(si), inliers, len(idx), 0, s)
    kept = np.array([k.class_id for k in keypoints], dtype=np.int64)
    there = _binarise(descriptors)
    agreeing = int((_popcount(there ^ stored.bits[kept]) <= AGREE_DISTANCE).sum())
    checked = len(idx)  # a point OpenCV could not describe counts as disagreeing
    is_copy = checked >= needed and agreeing >= MIN_AGREEMENT * checked
    return Verdict(is_copy, len(si), inliers, checked, agreeing, s, float(t[0]), float(t[1]))


COMPARE_SIDE = 192  # the pixel comparison runs at most at this longer side of the protected image
BLOCK = 16  # compare-frame pixels per side of one block
MAX_BLOCK_RESIDUAL = 0.5
# Against a received copy, fewer pixels are compared (not those under the letters): on the
# accuracy corpus a copy's worst block reached 0.48 (nearly all at most 0.40) and another
# patient's film, marked for the same member in the same minute, came down to 0.48 too; so
# the bar is lower, losing 4 copies of 189 and keeping that film out.
MAX_RECEIVED_RESIDUAL = 0.42


def _band(a: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(a, (0, 0), 0.8) - cv2.GaussianBlur(a, (0, 0), 3.0)


def original_grey(data: bytes) -> np.ndarray:
    """A protected image's original in grey for :func:`pixel_residual`: decoded as for its
    work image (a large JPEG at a fraction of its size), but not resampled to the work size,
    which cost more than the decoding: the comparison brings it to its own, smaller frame
    in one step. (Decoding at the comparison's size instead changed the residual of copies
    more: the reduced JPEG decode is softer than the candidate's resampling.) Raises
    :class:`ImageUnreadable`."""
    return np.asarray(load_grey(data, WORK_SIDE), dtype=np.uint8)


# One reference image's derived arrays at each compare size: ("band" | "resized" | "off text",
# width, height) -> array; kept for the next comparison with it in the same check.
References = dict[tuple[str, int, int], np.ndarray]

TEXT_LEVEL = 4.0  # grey levels the watermark changed a compare-frame pixel by: a stroke


def _off_text(
    rendering: np.ndarray, bare: np.ndarray, size: tuple[int, int],
    cache: References | None, bare_cache: References | None = None,
) -> np.ndarray:
    """1 where the rendering shows the unmarked original ``bare``, 0 on the watermark's
    strokes and a pixel around them, at the compare size ``size`` (kept in the rendering's
    ``cache`` beside its band-passed references; ``bare_cache`` is the original's, which
    has it at that size already)."""
    key = ("off text", *size)
    mask = cache.get(key) if cache is not None else None
    if mask is None:
        marked = _compare_size(rendering, size, cache)
        plain = _compare_size(bare, size, bare_cache)
        strokes = (np.abs(marked - plain) > TEXT_LEVEL).astype(np.uint8)
        mask = (cv2.dilate(strokes, np.ones((3, 3), np.uint8)) == 0).astype(np.float64)
        if cache is not None:
            cache[key] = mask
    return mask


def _compare_size(grey: np.ndarray, size: tuple[int, int], cache: References | None) -> np.ndarray:
    """``grey`` brought to the compare size ``size``, kept in ``cache`` (under a key of its
    own) for the next use at that size."""
    key = ("resized", *size)
    small = cache.get(key) if cache is not None else None
    if small is None:
        small = cv2.resize(grey.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA)
        if cache is not None:
            cache[key] = small
    return small


def _block_sums(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Sums of ``x`` over the BLOCK x BLOCK blocks at a stride of half a block, (rows, cols):
    each block is four half-block cells, so every cell is summed once."""
    half = BLOCK // 2
    cells = x[: (rows + 1) * half, : (cols + 1) * half].reshape(rows + 1, half, cols + 1, half).sum(axis=(1, 3))
    sums: np.ndarray = cells[:-1, :-1] + cells[1:, :-1] + cells[:-1, 1:] + cells[1:, 1:]
    return sums


def pixel_residual(
    original: np.ndarray, frame: tuple[int, int], candidate: np.ndarray, scale: float, tx: float, ty: float,
    detail: float = 128, references: References | None = None,
    unmarked: np.ndarray | None = None, mapped: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] | None = None,
    unmarked_references: References | None = None,
) -> tuple[float, float, int]:
    """How far the candidate, mapped back onto the protected ``original`` (its grey image at
    any size, from :func:`original_grey`; ``frame`` is the (width, height) of the work frame
    its features and the mapping are in), is from it, block by block: (worst block, second
    worst, blocks compared).

    Both are compared at :data:`COMPARE_SIDE`, band-passed (detail, not lighting), after one
    gain for the whole image; a block's residual is the energy of the difference over the
    energy of both, 0 for the same picture and about 1 for unrelated content. A copy is
    close everywhere; another patient's film or another report on the same form differs
    somewhere: a finding, a value, a name.

    ``references`` keeps the original, band-passed at each compare size, for the next
    comparison with the same original (:func:`decide` compares it with each view whose
    features match it; bringing the original to its compare size cost a third of a
    comparison).

    ``unmarked`` is given when ``original`` is a watermarked rendering: the original without
    the watermark. Only the pixels the text left alone are compared:
    on the strokes a copy's slight misregistration of sharp letters would count as
    difference, and the letters' own energy, the same in a rendering and in another
    patient's film marked for the same viewer in the same minute, would dilute where that
    patient differs.

    ``unmarked_references``: the unmarked original's own ``references``.

    ``mapped`` keeps the candidate mapped onto the compare frame (band-passed, and where it
    lies inside) for the next reference compared in the same geometry: a rendering the sender
    received is compared exactly where its original was.
    """
    w, h = frame
    f = min(COMPARE_SIDE, detail) / max(h, w)
    rw, rh = max(1, round(w * f)), max(1, round(h * f))
    a = references.get(("band", rw, rh)) if references is not None else None
    if a is None:
        a = _band(_compare_size(original, (rw, rh), references))
        if references is not None:
            references[("band", rw, rh)] = a
    known = mapped.get((rw, rh)) if mapped is not None else None
    if known is None:
        known = _mapped_candidate(candidate, (w, h), (rw, rh), f, scale, tx, ty)
        if mapped is not None:
            mapped[(rw, rh)] = known
    b, inside = known
    if inside.sum() < 4 * BLOCK * BLOCK:
        return 1.0, 1.0, 0
    gain = float((a[inside] * b[inside]).sum() / max((a[inside] ** 2).sum(), 1e-6))
    if gain <= 0:
        return 1.0, 1.0, 0
    b = b / gain
    floor = 0.05 * float((a[inside] ** 2).mean()) * BLOCK * BLOCK
    rows, cols = (rh - BLOCK) // (BLOCK // 2) + 1, (rw - BLOCK) // (BLOCK // 2) + 1
    if rows < 1 or cols < 1:
        return 1.0, 1.0, 0
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    covered = _block_sums(inside.astype(np.float64), rows, cols) >= 0.9 * BLOCK * BLOCK
    if unmarked is not None:
        off_text = _off_text(original, unmarked, (rw, rh), references, unmarked_references)
        a64, b64 = a64 * off_text, b64 * off_text
    diff = _block_sums((a64 - b64) ** 2, rows, cols)
    energy = _block_sums(a64**2, rows, cols) + _block_sums(b64**2, rows, cols)
    residuals = np.sort((diff / (energy + floor))[covered])[::-1]
    if residuals.size == 0:
        return 1.0, 1.0, 0
    return float(residuals[0]), float(residuals[1] if residuals.size > 1 else residuals[0]), int(residuals.size)


def _mapped_candidate(
    candidate: np.ndarray, frame: tuple[int, int], compare: tuple[int, int], f: float, scale: float, tx: float,
    ty: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The candidate mapped onto the protected image's compare frame ``compare`` (the work
    frame ``frame`` scaled by ``f``), band-passed, and the mask of compare pixels it covers
    (away from its edges and the frame's own)."""
    w, h = frame
    rw, rh = compare
    ch, cw = candidate.shape
    sw, sh = max(1, round(cw * f / scale)), max(1, round(ch * f / scale))
    small = cv2.resize(candidate.astype(np.float32, copy=False), (sw, sh),
                       interpolation=cv2.INTER_AREA if f < scale else cv2.INTER_LINEAR)
    # pixel centres: compare point u is work point (u + .5) * w / rw - .5 of the original,
    # which maps to s * p + t in the candidate, i.e. small point (q + .5) * sw / cw - .5
    fx, fy = w / rw, h / rh
    gx, gy = sw / cw, sh / ch
    m = np.array(
        [
            [gx * scale * fx, 0.0, gx * (scale * (0.5 * fx - 0.5) + tx + 0.5) - 0.5],
            [0.0, gy * scale * fy, gy * (scale * (0.5 * fy - 0.5) + ty + 0.5) - 0.5],
        ],
        dtype=np.float32,
    )
    dsize = (rw, rh)
    warped = cv2.warpAffine(small, m, dsize, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)
    ones = np.ones_like(small)
    valid = cv2.warpAffine(ones, m, dsize, flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0)
    inside = cv2.erode(valid, np.ones((7, 7), np.uint8)) > 0.5
    edge = 6  # the band-pass of the original is unreliable this near its own border
    inside[:edge] = inside[-edge:] = False
    inside[:, :edge] = inside[:, -edge:] = False
    return _band(warped), inside


@dataclass(frozen=True)
class Decision:
    """The outcome for one protected image: the feature verdict of the best view and, when
    it passed and the original could be read, the pixel residual (worst, second worst)."""

    is_copy: bool
    verdict: Verdict
    residual: tuple[float, float] | None
    as_delivered: bool = False  # matched a rendering the sender received, not the original


def decide(
    stored: Features, original: np.ndarray | Callable[[], np.ndarray | None] | None, views: list[Features],
    delivered: Callable[[np.ndarray], list[np.ndarray]] | None = None,
) -> Decision:
    """Whether the candidate (its :func:`candidate_views`) copies the protected image whose
    stored features and original (``original``, from :func:`original_grey`; None when the
    file is gone) are given. The features must match in one geometry, then the pixels: a
    copy differs from its original nowhere by more than :data:`MAX_BLOCK_RESIDUAL`.
    ``original`` may be a function that reads it: it is then called only when the
    features match, which most shortlisted images do not. Without the original, the dense
    feature agreement decides, with the stricter :data:`ORIGINAL_GONE_AGREEMENT`.

    ``delivered`` gives, from the original in grey, the renderings of the protected image
    that the sender received, in grey at its size (the server marked them with the sender's
    name and the minute: :func:`carematrix.watermark.remake.received_grey`): what a ward member has to forward is such a copy, whose visible watermark
    differs from the original along every line of text, so the pixels never matched the
    original. When they do not, the candidate is compared with those renderings the same
    way; another patient's film still differs from them where that patient does. Called
    only then, and at most once."""
    best: Decision | None = None
    loaded = False
    references: References = {}
    renderings: list[tuple[np.ndarray, References]] | None = None
    for view in views:
        verdict = verify(stored, view, dense=False)
        if not verdict.is_copy:
            if best is None or verdict.inliers > best.verdict.inliers:
                best = Decision(False, verdict, None)
            continue
        if not loaded:
            original = original() if callable(original) else original
            loaded = True
        if original is None or not isinstance(original, np.ndarray):
            verdict = verify(stored, view, dense=True)
            decision = Decision(verdict.is_copy and verdict.agreement >= ORIGINAL_GONE_AGREEMENT, verdict, None)
        else:
            grey = view.grey_float
            assert grey is not None  # a candidate view always has its work image
            # the detail the candidate has of the protected image: its size in this view,
            # or less when the view was enlarged from a smaller file
            enlarged = max(view.width, view.height) / max(view.native, 1)
            extent = verdict.scale * max(stored.width, stored.height) / max(1.0, enlarged)
            mapped: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
            worst, second, blocks = pixel_residual(
                original, (stored.width, stored.height), grey, verdict.scale, verdict.tx, verdict.ty, extent,
                references, mapped=mapped)
            decision = Decision(blocks >= MIN_BLOCKS and worst <= MAX_BLOCK_RESIDUAL, verdict, (worst, second))
            if not decision.is_copy and delivered is not None:
                if renderings is None:
                    renderings = [(rendering, {}) for rendering in delivered(original)]
                for rendering, cache in renderings:
                    worst, second, blocks = pixel_residual(
                        rendering, (stored.width, stored.height), grey, verdict.scale, verdict.tx, verdict.ty, extent,
                        cache, unmarked=original, mapped=mapped, unmarked_references=references)
                    if blocks >= MIN_BLOCKS and worst <= MAX_RECEIVED_RESIDUAL:
                        decision = Decision(True, verdict, (worst, second), as_delivered=True)
                        break
        if decision.is_copy:
            return decision
        best = decision
    return best or Decision(False, Verdict(False, 0, 0, 0, 0, 0.0), None)


MIN_BLOCKS = 6  # blocks of the pixel comparison: less overlap than this proves nothing
ORIGINAL_GONE_AGREEMENT = 0.9
