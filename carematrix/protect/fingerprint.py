"""Content fingerprints for the "no-forward" rule: content first posted in a protected room
must not be re-posted in any other room, whether as the same media, the same or trivially
altered text, part of a long text, a quote or reply fallback, or an edit.

Everything here is a pure function of plain data. Event content arrives as Synapse's frozen
mapping (``immutabledict``, lists as tuples) or as anything else a client managed to send, so
nothing assumes ``dict``/``list`` types and nothing raises on malformed content: content
that can't be read yields fewer fingerprints, never an exception in the send path.

Fingerprints (plain strings, so the store and logs need no knowledge of their kinds):

``mxc:<server>/<id>``
    Every ``mxc://`` URI in the content: the known media fields (``url``,
    ``info.thumbnail_url``, ``file.url``, ``info.thumbnail_file.url``, the same inside
    ``m.new_content``) and any other string that is or contains one (inline images in
    ``formatted_body``, a URI pasted as text), because whoever gets the URI can fetch the file.
``h:<sha256>``
    The bytes of an upload (:func:`media_hash_fingerprint`; the caller knows the file hash,
    we only see URIs), so re-uploading the same file under a new URI is still the same media.
``t:<hex>``
    The whole normalised text of a text source, of each quoted block in it and of the text
    outside the quotes, when at least :data:`MIN_TEXT_CHARS` long: the exact-copy test. The
    quoted/unquoted parts make "> protected text" plus a comment, and reply fallbacks that
    carry the protected message, match exactly even when too short for shingles.
``s:<hex>``
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

Normalisation (:func:`normalise_text`): NFKC, casefold, then drop every character of
Unicode category P* (punctuation), S* (symbols), Z* (separators) and C* (controls, format,
private use); letters, marks and digits of every script stay. So quoting ("> "), spacing,
case, fullwidth forms, markdown and emphasis never make a copy different. ``+`` (Sm) and
``.`` (Po) go too, deliberately: "K+ 6.8" becomes "k68". That conflates "6.8" with "68", but
only inside texts that agree in everything else over at least 12 characters, and the
fingerprint detects copying, never meaning; keeping them would let "6,8" or "6·8" slip
through, while one uniform rule needs no list of exceptions.

Decision rule (:func:`is_foreign_copy`), applied by the store to what a candidate message
shares with *one* earlier protected event, so common phrases shared with many different
protected messages never add up:

1. any media match (``mxc:`` or ``h:``) -> copy;
2. any whole-text match (``t:``) -> copy: the text, a quoted block or the text around the
   quotes equals a protected text after normalisation (case, spacing, punctuation, width);
3. a pasted stretch: the longest chain of consecutive shared shingles spans at least
   :data:`SHINGLE_RUN_CHARS` (32) normalised characters -> copy. Any shared stretch of 46 or
   more (about 55 characters of English prose, 50 of Chinese) always qualifies; one of 31
   or fewer never does on its own, so "please review the patient" (22) or "no known drug
   allergies" (20) shared by two unrelated messages is not a copy;
4. a reworded copy: at least :data:`SHINGLE_MIN_MATCHES` (3) shared shingles and at least
   :data:`SHINGLE_FRACTION` (half) of the candidate's shingles -> copy: the whole protected
   text with a few words added or changed, where edits break every stretch into short ones.
   A candidate of :data:`SAMPLE_MIN_SHINGLES` (64, about 350 characters) or more shingles
   is counted on its sample (:func:`shingle_sample`: every third shingle of each
   sequence): half of the sample shared, which a systematic sample estimates closely, and
   which lets the store probe a third of a long message's shingles first and the rest only
   around hits (rule 3 stays exact: every chain that can reach 32 characters has three or
   more shingles, so a sampled one, and the others within two positions of it).

Measured on generated clinical messages (English and Chinese): a 60-character paragraph of
a 2,000-character report pasted into a new message is caught >= 99 %; a 120-character
text with two words changed or added >= 98 %, 200 characters with three 100 %. The price of
never flagging common phrases: a text under ~60 normalised characters is protected against
trivial alteration (rule 2) but not reliably against a changed word, and two messages that
share a boilerplate sentence of 46+ characters look like a copy, because they are one.
Since the store keeps only the first origin of each fingerprint, a protected text made
mostly of boilerplate first posted elsewhere has its shingles split across several origin
events, and a paste of it may fall short of rule 3 for every one of them; distinctive text
(names, values, findings: what needs protecting) is unaffected.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import numpy as np

MIN_TEXT_CHARS = 12  # shorter texts ("ok", "收到", "thanks") get no whole-text fingerprint
K = 16  # characters per shingle
W = 8  # window, in k-grams: every W consecutive k-grams include a chosen one
T = 8  # t-gram length ordering the mod-minimizer's windows; T = K mod W makes it forward
SHINGLE_RUN_CHARS = 32  # a shared stretch this long is a pasted paragraph, not a phrase
SHINGLE_RUN_FALLBACK = 4  # shared shingles standing in for a run when offsets are unknown
SHINGLE_MIN_MATCHES = 3
SHINGLE_FRACTION = 0.5
SAMPLE_MIN_SHINGLES = 64  # from this many shingles on, a candidate is probed in two phases
SAMPLE_EVERY = 3  # the first phase probes every third shingle of each sequence

MEDIA_PREFIX = "mxc:"
HASH_PREFIX = "h:"
TEXT_PREFIX = "t:"
SHINGLE_PREFIX = "s:"

# Synapse refuses events over 64 KiB, so no honest source is longer; this only stops a
# caller outside Synapse from feeding megabytes into the hashing loop.
_MAX_SOURCE_CHARS = 65_536
_MAX_WALK_NODES = 10_000  # values visited when looking for mxc URIs anywhere in the content
_MAX_WALK_DEPTH = 32

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

_DROP_CATEGORIES = frozenset("PSZC")
# Hangul conjoining jamo (L, V, T), which compose with each other although of class 0
_JAMO = ((0x1100, 0x11FF), (0xA960, 0xA97F), (0xD7B0, 0xD7FF))
_ASCII_DROP = {c: None for c in range(128) if unicodedata.category(chr(c))[0] in _DROP_CATEGORIES}
# CJK Unified Ideographs: all letters (Lo) that NFKC and casefolding leave alone
_CJK_FIRST, _CJK_LAST = 0x4E00, 0x9FFF
_DROPPED = np.uint32(0xFFFFFFFF)  # not a code point: marks a dropped character
_CHAR_CACHE: dict[str, str | None] = {}  # character -> normalised, None: not alone
_MAX_CACHED_CHARS = 50_000
# In free text: server-name and media-ID characters only, so "mxc://hs/abc." or "(mxc://…)"
# yield the URI, and "mxc://hs/a/b" (no media ID has a slash) yields nothing.
_MXC_IN_TEXT = re.compile(
    r"mxc://[A-Za-z0-9.\-:\[\]]+/[A-Za-z0-9_\-]+(?![A-Za-z0-9_\-/])", re.IGNORECASE
)
# "> <@alice:example.org> text" / "> * <@alice:example.org> waves": the reply fallback header
_REPLY_HEADER = re.compile(r"^\s*(?:\*\s*)?<@[^<>\s]*>\s?")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Fingerprints:
    """The fingerprints of one event's content, by kind (see the module docstring)."""

    media: frozenset[str] = frozenset()
    text: frozenset[str] = frozenset()
    shingles: frozenset[str] = frozenset()
    # For each text source, its (offset, shingle) pairs in text order: lets the decision
    # rule tell one pasted run from common phrases scattered over a message.
    sequences: tuple[tuple[tuple[int, str], ...], ...] = field(
        default=(), compare=False, repr=False
    )

    def all(self) -> frozenset[str]:
        return self.media | self.text | self.shingles

    def is_empty(self) -> bool:
        return not (self.media or self.text or self.shingles)


EMPTY = Fingerprints()


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
    return out[out != _DROPPED].tobytes().decode("utf-32-le", "surrogatepass")


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


def media_hash_fingerprint(sha256_hex: str) -> str:
    """The fingerprint of an upload's bytes, so a re-upload under a new URI still matches.

    Lower-cased so that the caller's hex spelling never matters; anything that is not a
    SHA-256 hex digest is refused, because a malformed hash would silently match nothing.
    """
    digest = sha256_hex.strip().lower() if isinstance(sha256_hex, str) else ""
    if not _SHA256_HEX.fullmatch(digest):
        raise ValueError(f"expected a SHA-256 hex digest, got {sha256_hex!r}")
    return HASH_PREFIX + digest


def _get(mapping: Any, key: str) -> Any:
    """``mapping[key]`` if ``mapping`` is a mapping that has it; None for anything odd."""
    if not isinstance(mapping, Mapping):
        return None
    try:
        return mapping.get(key)
    except Exception:  # a hostile Mapping implementation must not break the send path
        return None


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)


def _parse_mxc(value: str) -> str | None:
    """``mxc://server/id`` in canonical spelling, or None when it is not one."""
    value = value.strip()
    if value[:6].lower() != "mxc://":
        return None
    rest = value[6:].split("?", 1)[0].split("#", 1)[0]
    server, sep, media_id = rest.partition("/")
    if not server or not sep or not media_id or "/" in media_id:
        return None
    if not (rest.isascii() and rest.isprintable()) or " " in rest:
        return None  # server names and media IDs are printable ASCII; nothing else is fetchable
    return f"mxc://{server}/{media_id}"


def _known_media_fields(content: Any) -> Iterator[Any]:
    yield _get(content, "url")
    info = _get(content, "info")
    yield _get(info, "thumbnail_url")
    yield _get(_get(content, "file"), "url")
    yield _get(_get(info, "thumbnail_file"), "url")


def _walk_strings(content: Any) -> Iterator[str]:
    """Every string value in nested mappings/sequences, breadth-first, with bounded work."""
    queue: deque[tuple[Any, int]] = deque([(content, 0)])
    visited = 0
    while queue and visited < _MAX_WALK_NODES:
        value, depth = queue.popleft()
        visited += 1
        if isinstance(value, str):
            yield value
        elif depth >= _MAX_WALK_DEPTH:
            continue
        elif isinstance(value, Mapping):
            try:
                children = list(value.values())
            except Exception:
                continue
            queue.extend((child, depth + 1) for child in children)
        elif _is_sequence(value):
            try:
                children = list(value)
            except Exception:
                continue
            queue.extend((child, depth + 1) for child in children)


def media_uris(content: Mapping[str, Any]) -> list[str]:
    """Every ``mxc://`` URI in the content, known media fields first, without duplicates.

    The caller looks these up to find the uploads' SHA-256 hashes (for ``h:`` fingerprints);
    the walk over all other values catches inline images, avatars and pasted URIs too.
    """
    found: dict[str, None] = {}
    new_content = _get(content, "m.new_content")
    for candidate in (*_known_media_fields(content), *_known_media_fields(new_content)):
        if isinstance(candidate, str):
            uri = _parse_mxc(candidate)
            if uri:
                found.setdefault(uri, None)
    for value in _walk_strings(content):
        if "mxc://" not in value.lower():
            continue
        uri = _parse_mxc(value)
        if uri:
            found.setdefault(uri, None)
            continue
        for match in _MXC_IN_TEXT.findall(value[:_MAX_SOURCE_CHARS]):
            uri = _parse_mxc(match)
            if uri:
                found.setdefault(uri, None)
    return list(found)


class _HtmlText(HTMLParser):
    """Text of an HTML ``formatted_body``: all of it, each blockquote, and what is outside.

    Reply fallbacks (``<mx-reply>``) are kept, not dropped: a reply in another room that
    carries protected text in its fallback leaks it like any copy. Their header ("In reply
    to @alice") counts as text of the whole body but not of the quoted block, so the block
    equals the message it quotes.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.outside: list[str] = []
        self.quotes: list[list[str]] = []
        self._quote_depth = 0
        self._reply_depth = 0
        self._reply_header = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "mx-reply":
            self._reply_depth += 1
            self._reply_header = True
        elif tag == "blockquote":
            if self._quote_depth == 0:
                self.quotes.append([])
            self._quote_depth += 1
        elif tag == "br" and self._reply_header:
            self._reply_header = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "mx-reply" and self._reply_depth:
            self._reply_depth -= 1
            self._reply_header = False
        elif tag == "blockquote" and self._quote_depth:
            self._quote_depth -= 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._quote_depth and self.quotes:
            if not (self._reply_depth and self._reply_header):
                self.quotes[-1].append(data)
        elif not self._reply_depth:
            self.outside.append(data)


def _html_segments(html: str) -> list[str]:
    parser = _HtmlText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # HTMLParser is lenient, but the send path must never fail on HTML
        pass
    return [
        "".join(parser.text),
        "".join(parser.outside),
        *("".join(q) for q in parser.quotes),
    ]


def _plain_segments(body: str) -> list[str]:
    """The body, each "> " quoted block (reply header removed) and the text outside them."""
    outside: list[str] = []
    quotes: list[list[str]] = []
    in_quote = False
    for line in body.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(">"):
            inner = stripped.lstrip("> \t")
            if not in_quote:
                quotes.append([])
                inner = _REPLY_HEADER.sub("", inner, count=1)
            quotes[-1].append(inner)
            in_quote = True
        else:
            outside.append(line)
            in_quote = False
    if not quotes:
        return [body]
    return [body, "\n".join(outside), *("\n".join(q) for q in quotes)]


def _text_sources(content: Any) -> Iterator[tuple[str, bool]]:
    """(text, is_html) for each text source of the content and of its ``m.new_content``."""
    for part in (content, _get(content, "m.new_content")):
        for key in ("body", "filename"):
            value = _get(part, key)
            if isinstance(value, str) and value:
                yield value[:_MAX_SOURCE_CHARS], False
        value = _get(part, "formatted_body")
        if isinstance(value, str) and value:
            yield value[:_MAX_SOURCE_CHARS], True


def text_fingerprint(normalised: str) -> str:
    """128 bits rather than a shingle's 64: one exact match alone decides a copy."""
    return (
        TEXT_PREFIX
        + hashlib.blake2b(normalised.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    )


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser on every element: a bijection whose every output bit
    depends on every input bit (uint64 arrays wrap, so numpy never warns)."""
    x = x ^ (x >> _SHIFT_33)
    x = x * _FMIX_1
    x = x ^ (x >> _SHIFT_33)
    x = x * _FMIX_2
    return x ^ (x >> _SHIFT_33)


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


def _shingles(normalised: str) -> tuple[list[int], list[str]]:
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
    offsets, shingles = _shingles(normalised)
    return tuple(zip(offsets, shingles, strict=True))


def content_fingerprints(event_type: str, content: Mapping[str, Any]) -> Fingerprints:
    """All fingerprints of an event's content (its ``m.new_content`` included).

    ``m.room.encrypted`` content yields none: ciphertext differs at every send, so hashing
    it would only fill the store; encrypted rooms can't be checked on the server.
    """
    if event_type == "m.room.encrypted" or not isinstance(content, Mapping):
        return EMPTY
    media = frozenset(MEDIA_PREFIX + uri[len("mxc://") :] for uri in media_uris(content))
    texts: set[str] = set()
    sequences: list[tuple[tuple[int, str], ...]] = []
    shingles: set[str] = set()
    seen: set[str] = set()
    for source, is_html in _text_sources(content):
        segments = _html_segments(source) if is_html else _plain_segments(source)
        whole = normalise_text(segments[0])
        if whole not in seen:
            seen.add(whole)
            offsets, found = _shingles(whole)
            if found:
                sequences.append(tuple(zip(offsets, found, strict=True)))
                shingles.update(found)
        for normalised in (whole, *(normalise_text(s) for s in segments[1:])):
            if len(normalised) >= MIN_TEXT_CHARS:
                texts.add(text_fingerprint(normalised))
    return Fingerprints(
        media=media,
        text=frozenset(texts),
        shingles=frozenset(shingles),
        sequences=tuple(sequences),
    )


def _position_index(
    candidate: Fingerprints,
) -> tuple[dict[str, list[int]], list[int], list[int], list[str]]:
    """Every position of ``candidate.sequences`` numbered in one series: shingle -> its
    position numbers, then each position's text offset, sequence number and shingle. Built
    once per candidate and kept on it (not a dataclass field: equality and repr ignore it),
    so that deciding on each of many origin events costs what that event shares, not the
    length of the candidate."""
    cached = candidate.__dict__.get("_position_index")
    if cached is not None:
        return cached
    index: dict[str, list[int]] = {}
    offsets: list[int] = []
    sources: list[int] = []
    shingles: list[str] = []
    for number, sequence in enumerate(candidate.sequences):
        for offset, shingle in sequence:
            index.setdefault(shingle, []).append(len(offsets))
            offsets.append(offset)
            sources.append(number)
            shingles.append(shingle)
    built = (index, offsets, sources, shingles)
    object.__setattr__(candidate, "_position_index", built)
    return built


def shingle_sample(candidate: Fingerprints) -> frozenset[str] | None:
    """The shingles a lookup probes first, and over which rule 4 counts, for a candidate of
    at least :data:`SAMPLE_MIN_SHINGLES` shingles with offsets; None for a smaller one (or
    one built by hand without ``sequences``), which is looked up and counted whole.

    Every :data:`SAMPLE_EVERY`-th shingle of each sequence (the first, the fourth, …), plus
    any shingle that is in no sequence. A chain that can satisfy rule 3 spans at least
    SHINGLE_RUN_CHARS - K = 16 characters between its first and last offsets, and
    consecutive chosen k-grams are at most W = 8 apart, so it has at least three
    positions: one of them is in the sample, and every other one is at most two positions
    from it (:func:`shingle_neighbours`). Cached on the candidate like the position index.
    """
    if "_sample" in candidate.__dict__:
        return candidate.__dict__["_sample"]
    sample: frozenset[str] | None = None
    if candidate.sequences and len(candidate.shingles) >= SAMPLE_MIN_SHINGLES:
        chosen = {s for sequence in candidate.sequences for _, s in sequence[::SAMPLE_EVERY]}
        listed = {s for sequence in candidate.sequences for _, s in sequence}
        sample = frozenset(chosen | (candidate.shingles - listed)) & candidate.shingles
    object.__setattr__(candidate, "_sample", sample)
    return sample


def shingle_neighbours(candidate: Fingerprints, hits: AbstractSet[str]) -> set[str]:
    """The shingles at most two positions away from any position of ``hits`` in the same
    sequence (``hits`` excluded): with the sample's hits, every position of every chain
    that can satisfy rule 3 (see :func:`shingle_sample`)."""
    index, _offsets, sources, shingles = _position_index(candidate)
    reach = SAMPLE_EVERY - 1
    out: set[str] = set()
    for hit in hits:
        for position in index.get(hit, ()):
            low = max(0, position - reach)
            high = min(len(shingles), position + reach + 1)
            for near in range(low, high):
                if sources[near] == sources[position]:
                    out.add(shingles[near])
    return out - set(hits)


def longest_shared_run(candidate: Fingerprints, shared: AbstractSet[str]) -> int:
    """Characters spanned by the longest chain of consecutive shared shingles.

    Consecutive winnowed shingles are at most W apart, so a chain is one stretch of text
    the candidate shares. Measured in characters, not shingles, because a protected text
    that repeats a phrase in several contexts has most of that phrase's k-grams selected
    somewhere, which can make a short phrase a long chain of shingles but never a long span.
    Only the positions of the shared shingles are visited.
    """
    index, offsets, sources, _ = _position_index(candidate)
    positions = sorted(p for shingle in shared for p in index.get(shingle, ()))
    longest = 0
    start = previous = -2
    for position in positions:
        if position != previous + 1 or sources[position] != sources[previous]:
            start = position  # not the next one of the same sequence: a new chain
        longest = max(longest, offsets[position] - offsets[start] + K)
        previous = position
    return longest


def is_foreign_copy(candidate: Fingerprints, matched: AbstractSet[str]) -> bool:
    """Whether sharing ``matched`` with one protected event makes ``candidate`` a copy of it
    (the rule and its reasons are in the module docstring).

    Fingerprints built without ``sequences`` (by hand, not by :func:`content_fingerprints`)
    have no offsets; for them SHINGLE_RUN_FALLBACK shared shingles stand in for a run.
    """
    shared: set[str] = set()
    for fingerprint in matched:
        if fingerprint.startswith((MEDIA_PREFIX, HASH_PREFIX, TEXT_PREFIX)):
            return True
        if fingerprint.startswith(SHINGLE_PREFIX):
            shared.add(fingerprint)
    if not shared:
        return False
    if candidate.sequences:
        if longest_shared_run(candidate, shared) >= SHINGLE_RUN_CHARS:
            return True
    elif len(shared) >= SHINGLE_RUN_FALLBACK:
        return True
    sample = shingle_sample(candidate)
    if sample is not None:  # a long candidate: counted on its sample
        shared &= sample
        total = len(sample)
    else:
        total = max(len(candidate.shingles), len(shared))
    return len(shared) >= max(SHINGLE_MIN_MATCHES, math.ceil(SHINGLE_FRACTION * total))
