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
    Hashes of selected k-grams of each normalised text source: the partial-copy test
    (:mod:`carematrix.protect.shingles`).

Each step has its module: :mod:`~carematrix.protect.extract` finds media and text in the
content, :mod:`~carematrix.protect.normalise` makes text comparable,
:mod:`~carematrix.protect.shingles` hashes it, :mod:`~carematrix.protect.model` holds the
result and :mod:`~carematrix.protect.copy_decision` decides what counts as a copy.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from carematrix.protect.extract import media_uris, text_segments, text_sources
from carematrix.protect.model import EMPTY, HASH_PREFIX, MEDIA_PREFIX, TEXT_PREFIX, Fingerprints
from carematrix.protect.normalise import normalise_text
from carematrix.protect.shingles import chosen_shingles

MIN_TEXT_CHARS = 12  # shorter texts ("ok", "收到", "thanks") get no whole-text fingerprint
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def media_hash_fingerprint(sha256_hex: str) -> str:
    """The fingerprint of an upload's bytes, so a re-upload under a new URI still matches.

    Lower-cased so that the caller's hex spelling never matters; anything that is not a
    SHA-256 hex digest is refused, because a malformed hash would silently match nothing.
    """
    digest = sha256_hex.strip().lower() if isinstance(sha256_hex, str) else ""
    if not _SHA256_HEX.fullmatch(digest):
        raise ValueError(f"expected a SHA-256 hex digest, got {sha256_hex!r}")
    return HASH_PREFIX + digest


def text_fingerprint(normalised: str) -> str:
    """128 bits rather than a shingle's 64: one exact match alone decides a copy."""
    return (
        TEXT_PREFIX
        + hashlib.blake2b(normalised.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    )


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
    for source, is_html in text_sources(content):
        segments = text_segments(source, is_html)
        whole = normalise_text(segments[0])
        if whole not in seen:
            seen.add(whole)
            offsets, found = chosen_shingles(whole)
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
