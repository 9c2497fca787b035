"""What counts as a copy of a protected event: the no-forward decision over fingerprints.

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

import math
from collections.abc import Set as AbstractSet

from carematrix.protect.model import (
    HASH_PREFIX,
    MEDIA_PREFIX,
    SHINGLE_PREFIX,
    TEXT_PREFIX,
    Fingerprints,
)
from carematrix.protect.shingles import K

SHINGLE_RUN_CHARS = 32  # a shared stretch this long is a pasted paragraph, not a phrase
SHINGLE_RUN_FALLBACK = 4  # shared shingles standing in for a run when offsets are unknown
SHINGLE_MIN_MATCHES = 3
SHINGLE_FRACTION = 0.5
SAMPLE_MIN_SHINGLES = 64  # from this many shingles on, a candidate is probed in two phases
SAMPLE_EVERY = 3  # the first phase probes every third shingle of each sequence


# shingle -> its position numbers; each position's text offset, sequence number, shingle.
PositionIndex = tuple[dict[str, list[int]], list[int], list[int], list[str]]


def _position_index(candidate: Fingerprints) -> PositionIndex:
    """Every position of ``candidate.sequences`` numbered in one series: shingle -> its
    position numbers, then each position's text offset, sequence number and shingle. Built
    once per candidate and kept on it (not a dataclass field: equality and repr ignore it),
    so that deciding on each of many origin events costs what that event shares, not the
    length of the candidate."""
    cached: PositionIndex | None = candidate.__dict__.get("_position_index")
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
        cached: frozenset[str] | None = candidate.__dict__["_sample"]
        return cached
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
