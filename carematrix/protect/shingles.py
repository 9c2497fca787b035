"""Shingles: the partial-copy test's fingerprints of a normalised text.

Hashes of selected k-grams (k = :data:`K` characters, one chosen in every window of
:data:`W` consecutive k-grams) of each normalised text source: the partial-copy test.
Characters, not words, because Chinese has no spaces. The hash is a 64-bit polynomial
over the code points with fixed constants, computed for all k-grams at once with numpy
(:func:`_kgram_hashes`), so it is the same in every process and on every machine, and a
4,000-character text is fingerprinted in about 0.2 ms. The choice is the mod-minimizer
(:func:`_mod_minimizer`): it keeps about 3/17 of the k-grams (winnowing, used before,
kept 2/(W+1) = 2/9: a fifth more keys to store and probe). A window's choice depends
only on the text inside it and the scheme is forward, so two texts sharing a stretch of
L >= K+W-1 normalised characters pick the same k-grams inside it, whatever surrounds
it: a chain of consecutive shared shingles spanning at least L-2W+2 characters. There
is no cap on the count: Synapse's 64 KiB event limit bounds it (about 11,600 for the
largest possible text), and a cap would let a copy hide behind a long preamble.
"""

from __future__ import annotations

import numpy as np

from carematrix.protect.model import SHINGLE_PREFIX

K = 16  # characters per shingle
W = 8  # window, in k-grams: every W consecutive k-grams include a chosen one
T = 8  # t-gram length ordering the mod-minimizer's windows; T = K mod W makes it forward

# k-gram hashing, all arithmetic modulo 2^64 (numpy uint64 wraps): fixed constants, so a
# fingerprint is the same in every process and on every machine.
_CHAR_SEED = np.uint64(0x243F6A8885A308D3)  # so that code point 0 does not hash to 0
_ROLL_BASE = 0x5DEECE66D  # odd: multiplying by any power of it is a bijection modulo 2^64
_FMIX_1 = np.uint64(0xFF51AFD7ED558CCD)  # MurmurHash3's 64-bit finaliser constants
_FMIX_2 = np.uint64(0xC4CEB9FE1A85EC53)
_SHIFT_33 = np.uint64(33)
_TIE_BITS = 24  # position bits in the mod-minimizer's order (normalised texts < 16 M chars)
_TIE_MASK = np.uint64((1 << _TIE_BITS) - 1)
_TIE_CLEAR = np.uint64(((1 << 64) - 1) ^ ((1 << _TIE_BITS) - 1))


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser on every element: a bijection whose every output bit
    depends on every input bit (uint64 arrays wrap, so numpy never warns)."""
    x = x ^ (x >> _SHIFT_33)
    x = x * _FMIX_1
    x = x ^ (x >> _SHIFT_33)
    x = x * _FMIX_2
    mixed: np.ndarray = x ^ (x >> _SHIFT_33)
    return mixed


def _window_hashes(chars: np.ndarray, width: int) -> np.ndarray:
    """``out[i]`` = the polynomial hash of ``chars[i : i + width]`` (see :func:`_kgram_hashes`),
    by doubling: windows of 2m characters from two windows of m, combining the doublings
    that make up ``width`` (its binary digits), lowest first."""
    result: np.ndarray | None = None
    result_width = 0
    block, span, remaining = chars, 1, width
    while True:
        if remaining & 1:
            if result is None:
                result, result_width = block, span
            else:
                count = len(chars) - result_width - span + 1
                shift = np.uint64(pow(_ROLL_BASE, span, 1 << 64))
                result = result[:count] * shift + block[result_width : result_width + count]
                result_width += span
        remaining >>= 1
        if not remaining:
            break
        shift = np.uint64(pow(_ROLL_BASE, span, 1 << 64))
        block = block[: len(block) - span] * shift + block[span:]
        span *= 2
    assert result is not None
    return _fmix64(result)


def _mixed_chars(normalised: str) -> np.ndarray:
    raw = normalised.encode("utf-32-le", "surrogatepass")
    return _fmix64(np.frombuffer(raw, dtype="<u4").astype(np.uint64) + _CHAR_SEED)


def _kgram_hashes(normalised: str, width: int = K) -> np.ndarray:
    """A 64-bit hash (``uint64``) of every ``width``-character window (K for shingles, T for
    the mod-minimizer's order), computed for all windows at once with numpy.

    Each code point is first mixed (:func:`_fmix64`), then each window gets the polynomial
    ``sum(c[i+j] * B^(width-1-j))`` modulo 2^64, built by doubling, so K = 16 takes four
    array operations whatever the text length. A final :func:`_fmix64` spreads the values,
    so that window minima don't favour particular characters and the low bits are as good
    as the high ones. Only fixed constants and wrapping 64-bit arithmetic are involved: the
    same text gives the same hashes in every process, on every machine. The constants are
    public, so collisions could be crafted; that gains nothing, since a crafted collision
    only makes a message share what its author could have pasted anyway.
    """
    return _window_hashes(_mixed_chars(normalised), width)


def _sliding_min(values: np.ndarray, width: int) -> np.ndarray:
    """``out[i] = min(values[i : i + width])``, by doubling (a few array operations)."""
    span = 1
    while span * 2 <= width:
        values = np.minimum(values[: len(values) - span], values[span:])
        span *= 2
    if span < width:  # two overlapping power-of-two windows cover any width
        values = np.minimum(values[: len(values) - (width - span)], values[width - span :])
    return values


def _mod_minimizer(tmer_hashes: np.ndarray) -> np.ndarray:
    """Positions of the k-grams chosen by the mod-minimizer, ascending (Groot Koerkamp &
    Pibiri, 2024): in each window of W consecutive k-grams (W+K-1 characters) find the
    smallest of its W+K-T t-grams (hash order, the leftmost on a tie), at position x
    within the window; the window chooses its k-gram at x mod W.

    Ties are broken by position, through the low :data:`_TIE_BITS` bits: the order is the
    top 64-_TIE_BITS bits of the hash, then the position, so each window's choice is a
    function of its text alone. With T = K mod W (+ a multiple of W) the scheme is
    *forward* (a window further right never chooses a k-gram further left), which keeps
    winnowing's guarantee: every k-gram chosen between the choices of the first and last
    windows inside a shared stretch is chosen by a window inside it, so both texts choose
    it. It chooses about (2 + (W+K-1-T) // W) / (W+K-T+1) = 3/17 of the k-grams instead of
    winnowing's 2/(W+1) = 2/9: a fifth fewer keys to store and to probe.
    """
    window = W + K - T
    count = len(tmer_hashes) - window + 1  # windows of W k-grams
    positions = np.arange(len(tmer_hashes), dtype=np.uint64)
    packed = (tmer_hashes & _TIE_CLEAR) | positions
    smallest = (_sliding_min(packed, window) & _TIE_MASK).astype(np.int64)
    starts = np.arange(count, dtype=np.int64)
    chosen = starts + (smallest - starts) % W  # ascending: the scheme is forward
    return chosen[np.concatenate(([True], chosen[1:] != chosen[:-1]))]


def chosen_shingles(normalised: str) -> tuple[list[int], list[str]]:
    """Offsets and shingles (``s:<hex>``) of the chosen K-grams, in text order."""
    if len(normalised) < K + W:
        return [], []
    chars = _mixed_chars(normalised)
    hashes = _window_hashes(chars, K)
    chosen = _mod_minimizer(_window_hashes(chars, T))
    # one hex string with a separator every 8 bytes, split in C: far cheaper than
    # formatting hundreds of integers one by one
    digits = hashes[chosen].astype(">u8").tobytes().hex(":", 8)
    shingles = (SHINGLE_PREFIX + digits.replace(":", " " + SHINGLE_PREFIX)).split(" ")
    return chosen.tolist(), shingles


def shingle_sequence(normalised: str) -> tuple[tuple[int, str], ...]:
    """(offset, shingle) for the chosen K-grams in text order: one k-gram of every window
    of W consecutive k-grams, chosen by the mod-minimizer (:func:`_mod_minimizer`).

    A window's choice depends only on the text inside it, so two texts sharing a stretch of
    K+W-1 characters choose the same k-grams there, whatever surrounds the stretch.
    """
    offsets, shingles = chosen_shingles(normalised)
    return tuple(zip(offsets, shingles, strict=True))
