"""Text as the copy tests see it.

Normalisation (:func:`normalise_text`): NFKC, casefold, then drop every character of
Unicode category P* (punctuation), S* (symbols), Z* (separators) and C* (controls, format,
private use); letters, marks and digits of every script stay. So quoting ("> "), spacing,
case, fullwidth forms, markdown and emphasis never make a copy different. ``+`` (Sm) and
``.`` (Po) go too, deliberately: "K+ 6.8" becomes "k68". That conflates "6.8" with "68", but
only inside texts that agree in everything else over at least 12 characters, and the
fingerprint detects copying, never meaning; keeping them would let "6,8" or "6·8" slip
through, while one uniform rule needs no list of exceptions.
"""

from __future__ import annotations

import unicodedata

import numpy as np

_DROP_CATEGORIES = frozenset("PSZC")
# Hangul conjoining jamo (L, V, T), which compose with each other although of class 0
_JAMO = ((0x1100, 0x11FF), (0xA960, 0xA97F), (0xD7B0, 0xD7FF))
_ASCII_DROP = {c: None for c in range(128) if unicodedata.category(chr(c))[0] in _DROP_CATEGORIES}
# CJK Unified Ideographs: all letters (Lo) that NFKC and casefolding leave alone
_CJK_FIRST, _CJK_LAST = 0x4E00, 0x9FFF
_DROPPED = np.uint32(0xFFFFFFFF)  # not a code point: marks a dropped character
_CHAR_CACHE: dict[str, str | None] = {}  # character -> normalised, None: not alone
_MAX_CACHED_CHARS = 50_000


def _is_boundary(char: str) -> bool:
    """Whether a text may be split just before ``char`` without changing its NFKC.

    True for a character whose decomposition starts with a starter (canonical combining
    class 0) that never composes with what precedes it. The starters that do compose
    backwards are marks (Mc vowel signs) and the Hangul conjoining jamo; every mark and
    every jamo is refused here, which keeps the test simple and safe (a unit test checks
    it against every canonical composition in Unicode).
    """
    first = unicodedata.normalize("NFKD", char)[:1] or char
    code = ord(first)
    return not (
        unicodedata.combining(first)
        or unicodedata.category(first)[0] == "M"
        or unicodedata.category(char)[0] == "M"
        or any(low <= code <= high for low, high in _JAMO)
    )


def _char_normalised(char: str) -> str | None:
    """What :func:`normalise_text` makes of ``char`` alone, or None when a text can't be
    normalised one character at a time around it (see :func:`_is_boundary`). Cached."""
    try:
        return _CHAR_CACHE[char]
    except KeyError:
        pass
    result: str | None = None
    if _is_boundary(char):
        folded = unicodedata.normalize("NFKC", char).casefold()
        if _is_boundary(folded[:1]):
            result = "".join(
                c
                for c in unicodedata.normalize("NFKC", folded)
                if unicodedata.category(c)[0] not in _DROP_CATEGORIES
            )
    if len(_CHAR_CACHE) < _MAX_CACHED_CHARS:
        _CHAR_CACHE[char] = result
    return result


def _normalise_exact(text: str) -> str:
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    text = text.casefold()
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    drop = {ord(c): None for c in set(text) if unicodedata.category(c)[0] in _DROP_CATEGORIES}
    return text.translate(drop)


def _normalise_by_char(text: str) -> str:
    """:func:`normalise_text` of a non-ASCII text, one character at a time when that is
    exact (every character a boundary), with numpy doing the per-character work."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    # ASCII digits and small letters and CJK unified ideographs stay as they are; only
    # the other characters (punctuation, spaces, capitals, other scripts) are looked up
    special = ~(
        ((codes >= 0x61) & (codes <= 0x7A))
        | ((codes >= 0x30) & (codes <= 0x39))
        | ((codes >= _CJK_FIRST) & (codes <= _CJK_LAST))
    )
    distinct = np.unique(codes[special])
    mapping: dict[int, str] = {}
    single = True
    for code in distinct.tolist():
        mapped = _char_normalised(chr(code))
        if mapped is None:  # a mark or a conjoining jamo: the whole text, the slow way
            return _normalise_exact(text)
        mapping[code] = mapped
        single = single and len(mapped) <= 1
    if not single:  # some character expands ("ß" -> "ss", "㎎" -> "mg")
        return text.translate(mapping)
    replacement = np.array([ord(m) if m else _DROPPED for m in mapping.values()], dtype=np.uint32)
    out = codes.copy()
    out[special] = replacement[np.searchsorted(distinct, codes[special])]
    kept: np.ndarray = out[out != _DROPPED]
    return kept.tobytes().decode("utf-32-le", "surrogatepass")


def normalise_text(text: str) -> str:
    """The text as the copy tests see it: only letters, marks and digits, NFKC-casefolded.

    NFKC runs again after casefolding because casefolding can produce non-normalised
    sequences; the result is Unicode's NFKC_Casefold up to the dropped categories. ASCII
    needs only lower-casing and a translate table; any other text is normalised one
    character at a time (each distinct character once, cached), which is exact when every
    character starts a normalisation boundary, and by ``unicodedata`` when one doesn't (a
    combining mark, a Hangul jamo). A long message costs well under 0.1 ms.
    """
    if not isinstance(text, str) or not text:
        return ""
    if text.isascii():  # ASCII is NFKC already, and its casefold is lower()
        return text.lower().translate(_ASCII_DROP)
    return _normalise_by_char(text)
