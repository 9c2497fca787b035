"""What a no-forward fingerprint is: plain strings tagged by kind, so the store and logs need
no knowledge of the kinds, and the :class:`Fingerprints` of one event's content grouped by
kind (built by :func:`carematrix.protect.fingerprint.content_fingerprints`).

``mxc:`` media URIs and ``h:`` upload hashes (media), ``t:`` whole normalised texts (the
exact-copy test), ``s:`` shingles (the partial-copy test; see
:mod:`carematrix.protect.shingles`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MEDIA_PREFIX = "mxc:"
HASH_PREFIX = "h:"
TEXT_PREFIX = "t:"
SHINGLE_PREFIX = "s:"


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

