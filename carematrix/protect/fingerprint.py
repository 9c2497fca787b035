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
    Winnowed k-gram hashes (k = :data:`K` characters, window :data:`W`) of each normalised
    text source: the partial-copy test. Characters, not words, because Chinese has no
    spaces. Winnowing keeps about 2/(W+1) of the k-grams, and a window's choice depends
    only on the text inside it, so two texts sharing a stretch of L >= K+W-1 normalised
    characters pick the same k-grams inside it, whatever surrounds it: a chain of
    consecutive shared shingles spanning at least L-2W+2 characters. There is no cap on the
    count: Synapse's 64 KiB event limit bounds it (about 14,600 for the largest possible
    text), and a cap would let a copy hide behind a long preamble.

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

MIN_TEXT_CHARS = 12  # shorter texts ("ok", "收到", "thanks") get no whole-text fingerprint
K = 16  # characters per shingle
W = 8  # winnowing window, in k-grams
SHINGLE_RUN_CHARS = 32  # a shared stretch this long is a pasted paragraph, not a phrase
SHINGLE_RUN_FALLBACK = 4  # shared shingles standing in for a run when offsets are unknown
SHINGLE_MIN_MATCHES = 3
SHINGLE_FRACTION = 0.5

MEDIA_PREFIX = "mxc:"
HASH_PREFIX = "h:"
TEXT_PREFIX = "t:"
SHINGLE_PREFIX = "s:"

# Synapse refuses events over 64 KiB, so no honest source is longer; this only stops a
# caller outside Synapse from feeding megabytes into the hashing loop.
_MAX_SOURCE_CHARS = 65_536
_MAX_WALK_NODES = 10_000  # values visited when looking for mxc URIs anywhere in the content
_MAX_WALK_DEPTH = 32

_ROLL_PRIME = (1 << 61) - 1
_ROLL_BASE = 0x5DEECE66D  # any base in 2..P-2 works; fixed so fingerprints are stable
_ROLL_BASE_K = pow(_ROLL_BASE, K, _ROLL_PRIME)
_ROLL_MIX = 0x9E3779B97F4A7C15  # odd, so multiplying modulo 2^64 is a bijection
_MASK64 = (1 << 64) - 1

_DROP_CATEGORIES = frozenset("PSZC")
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


def normalise_text(text: str) -> str:
    """The text as the copy tests see it: only letters, marks and digits, NFKC-casefolded.

    NFKC runs again after casefolding because casefolding can produce non-normalised
    sequences; the result is Unicode's NFKC_Casefold up to the dropped categories. Each
    distinct character is classified once and dropped with ``str.translate``, which keeps a
    long message well under a millisecond.
    """
    if not isinstance(text, str) or not text:
        return ""
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    text = text.casefold()
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    drop = {ord(c): None for c in set(text) if unicodedata.category(c)[0] in _DROP_CATEGORIES}
    return text.translate(drop)


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


def _kgram_hashes(normalised: str) -> list[int]:
    """A 64-bit hash of every K-character window, in one pass over the text.

    Karp-Rabin rolling hash modulo the Mersenne prime 2^61-1 (each window costs a few integer
    operations instead of a cryptographic hash call, several times faster on the long texts
    that decide the check's p99), then a multiply by an odd constant modulo 2^64, a bijection
    that spreads the values so that window minima don't favour particular characters. The
    base is fixed, so collisions could be crafted; that gains nothing, since a crafted
    collision only makes a message share what its author could have pasted anyway.
    """
    codes = [ord(c) for c in normalised]
    h = 0
    for c in codes[:K]:
        h = (h * _ROLL_BASE + c) % _ROLL_PRIME
    hashes = [(h * _ROLL_MIX) & _MASK64]
    for out, c in zip(codes, codes[K:], strict=False):
        h = (h * _ROLL_BASE + c - out * _ROLL_BASE_K) % _ROLL_PRIME
        hashes.append((h * _ROLL_MIX) & _MASK64)
    return hashes


def shingle_sequence(normalised: str) -> tuple[tuple[int, str], ...]:
    """(offset, shingle) for the winnowed K-grams in text order: in every window of W
    consecutive k-grams the smallest hash (rightmost on ties), each position once
    (Schleimer, Wilkerson & Aiken, 2003).

    A window's choice depends only on the text inside it, so two texts sharing a stretch of
    K+W-1 characters choose the same k-grams there, whatever surrounds the stretch.
    """
    if len(normalised) < K + W:
        return ()
    hashes = _kgram_hashes(normalised)
    chosen: list[int] = []
    min_pos, min_hash = -1, 0
    for i in range(W - 1, len(hashes)):
        start = i - W + 1
        if min_pos < start:  # the minimum left the window: find the new (rightmost) one
            window = hashes[start : i + 1]
            min_hash = min(window)
            min_pos = i - window[::-1].index(min_hash)
        elif hashes[i] <= min_hash:
            min_pos, min_hash = i, hashes[i]
        if not chosen or chosen[-1] != min_pos:
            chosen.append(min_pos)
    return tuple((i, f"{SHINGLE_PREFIX}{hashes[i]:016x}") for i in chosen)


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
    seen: set[str] = set()
    for source, is_html in _text_sources(content):
        segments = _html_segments(source) if is_html else _plain_segments(source)
        whole = normalise_text(segments[0])
        if whole not in seen:
            seen.add(whole)
            sequence = shingle_sequence(whole)
            if sequence:
                sequences.append(sequence)
        for normalised in (whole, *(normalise_text(s) for s in segments[1:])):
            if len(normalised) >= MIN_TEXT_CHARS:
                texts.add(text_fingerprint(normalised))
    return Fingerprints(
        media=media,
        text=frozenset(texts),
        shingles=frozenset(s for sequence in sequences for _, s in sequence),
        sequences=tuple(sequences),
    )


def longest_shared_run(candidate: Fingerprints, shared: AbstractSet[str]) -> int:
    """Characters spanned by the longest chain of consecutive shared shingles.

    Consecutive winnowed shingles are at most W apart, so a chain is one stretch of text
    the candidate shares. Measured in characters, not shingles, because a protected text
    that repeats a phrase in several contexts has most of that phrase's k-grams selected
    somewhere, which can make a short phrase a long chain of shingles but never a long span.
    """
    longest = 0
    for sequence in candidate.sequences:
        start: int | None = None
        for offset, shingle in sequence:
            if shingle not in shared:
                start = None
                continue
            if start is None:
                start = offset
            longest = max(longest, offset - start + K)
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
    total = max(len(candidate.shingles), len(shared))
    return len(shared) >= max(SHINGLE_MIN_MATCHES, math.ceil(SHINGLE_FRACTION * total))
