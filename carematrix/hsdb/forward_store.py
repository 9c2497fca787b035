"""Where protected content was first posted, on any DB-API cursor in SQLite or PostgreSQL.

Same conventions as :mod:`carematrix.hsdb.audit_store`: every function takes the transaction's
cursor (``txn``) and the ``dialect``, so it runs inside Synapse's ``run_db_interaction`` and
on connections of our own alike; nothing here commits.

Storage, chosen to stay small and fast at millions of fingerprints:

``carematrix_protected_fingerprint (fp BIGINT PRIMARY KEY, origin BIGINT)``
    One row per fingerprint, keyed by a 64-bit integer instead of the string (:func:`key`:
    a shingle's own hash, BLAKE2b of anything else): 16 bytes of data per row instead of
    ~100, and on SQLite the key is the rowid itself, so the table *is* its index. Among a
    million keys the chance that any two collide is below one in a million, and a collision
    only ever adds one spurious shared fingerprint to one lookup. The strings in a
    :class:`ForeignMatch` come from the caller's own candidate, never from the table.
``carematrix_protected_origin (id BIGINT PRIMARY KEY, room_id, event_id, ts)``
    One row per recorded event (``id`` is the 64-bit hash of the event ID), so a message's
    dozens of shingles don't each repeat its room and event IDs.

A check probes primary keys (``fp IN (...)`` in chunks of 500 on SQLite, ``fp = ANY(array)``
on PostgreSQL), returning each stored key's origin id; the decision rule runs per origin
id, and only when it finds a copy does one more statement read those origin events' rooms
and IDs. A message of fewer than 64 shingles is probed whole in one statement. A longer one
(:func:`~carematrix.protect.copy_decision.shingle_sample`) is probed in two phases: its media,
texts and every third shingle first, which decides rules 1, 2 and 4 and finds every chain
that can satisfy rule 3; then, only when no copy was found and the sample had hits, the
shingles within two positions of those hits, which completes those chains. The decision is
the one probing every key would give, at about a third of the probes plus a few per hit
(a long new message shares a score of common phrases with the store): with a million
fingerprints stored, p99 about 1.7 ms for the whole check on PostgreSQL, where each
statement costs a round trip and each probe 1.3-2.5 us (``python -m bench.no_forward``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from carematrix.hsdb.audit_store import check_dialect, sql
from carematrix.protect.copy_decision import is_foreign_copy, shingle_neighbours, shingle_sample
from carematrix.protect.model import (
    HASH_PREFIX,
    MEDIA_PREFIX,
    SHINGLE_PREFIX,
    TEXT_PREFIX,
    Fingerprints,
)

TABLE = "carematrix_protected_fingerprint"
ORIGIN_TABLE = "carematrix_protected_origin"

# Keys per statement: far below SQLite's oldest variable limit (999) and PostgreSQL's.
_CHUNK = 500
_SHINGLE_LEN = len(SHINGLE_PREFIX) + 16
_HEX64 = re.compile(r"[0-9a-f]{16}")
_SHINGLES = re.compile(rf"(?:{re.escape(SHINGLE_PREFIX)}[0-9a-f]{{16}})*")


@dataclass(frozen=True)
class ForeignMatch:
    """The earlier protected event a message copies, and what it shares with it."""

    origin_room: str
    origin_event: str
    matched: frozenset[str]


def key(fingerprint: str) -> int:
    """The stored 64-bit key of a fingerprint (signed, to fit BIGINT and SQLite integers).

    Shingles (the bulk of every lookup) already are 64-bit hashes, so their hex is the key;
    every other fingerprint is hashed, kind prefix included, so kinds never line up.
    """
    if (
        len(fingerprint) == _SHINGLE_LEN
        and fingerprint.startswith(SHINGLE_PREFIX)
        and _HEX64.fullmatch(fingerprint, len(SHINGLE_PREFIX))
    ):
        value = int(fingerprint[len(SHINGLE_PREFIX) :], 16)
    else:
        digest = hashlib.blake2b(fingerprint.encode("utf-8", "surrogatepass"), digest_size=8)
        value = int.from_bytes(digest.digest(), "big")
    return value - (1 << 64) if value >= 1 << 63 else value


def _shingle_keys(shingles: list[str]) -> list[int] | None:
    """:func:`key` of every shingle at once (one regex match and one hex decode for the
    lot), or None when any of them is not a well-formed ``s:<16 hex digits>``."""
    joined = "".join(shingles)
    if len(joined) != _SHINGLE_LEN * len(shingles) or not _SHINGLES.fullmatch(joined):
        return None
    if set(map(len, shingles)) != {_SHINGLE_LEN}:  # equal total, unequal parts
        return None
    raw = bytes.fromhex(joined.replace(SHINGLE_PREFIX, ""))
    keys: list[int] = np.frombuffer(raw, dtype=">i8").tolist()  # big-endian, signed like key()
    return keys


def _keys(fingerprints: Iterable[str], shingles: Iterable[str] = ()) -> dict[int, str]:
    """Stored key -> fingerprint; ``shingles`` (strings from :class:`Fingerprints`, nearly
    always well-formed) are converted in one batch, the rest one by one."""
    wanted: dict[int, str] = {}
    batch = list(shingles)
    try:
        converted = _shingle_keys(batch) if batch else []
    except TypeError:  # not all strings: joined one by one below, the odd ones skipped
        converted = None
    if converted is None:
        fingerprints = (*batch, *fingerprints)
    else:
        wanted.update(zip(converted, batch, strict=True))
    for fingerprint in fingerprints:
        if isinstance(fingerprint, str) and fingerprint:
            wanted[key(fingerprint)] = fingerprint
    return wanted


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def record_origin(
    txn: Any,
    dialect: str,
    fingerprints: Iterable[str],
    room_id: str,
    event_id: str,
    ts_ms: int,
) -> None:
    """Remember that ``event_id`` in ``room_id`` is where these fingerprints come from.

    First origin wins: a fingerprint already stored keeps the room it was first seen in, so
    re-posting protected content in a second protected room can't move its origin there and
    thereby free it for the second room. Keys are inserted in sorted order so that
    concurrent recorders on PostgreSQL wait on shared keys in one order and never deadlock;
    under REPEATABLE READ (Synapse's level) the later of two such recorders gets a
    serialization failure, which ``run_db_interaction`` retries, and the retry then finds
    the keys stored and keeps the first origin.
    """
    check_dialect(dialect)
    items = [f for f in fingerprints if isinstance(f, str) and f]
    shingles = [f for f in items if f.startswith(SHINGLE_PREFIX)]
    others = [f for f in items if not f.startswith(SHINGLE_PREFIX)]
    keys = sorted(_keys(others, shingles))
    if not keys:
        return
    origin = key(event_id)
    txn.execute(
        sql(
            f"INSERT INTO {ORIGIN_TABLE} (id, room_id, event_id, ts) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO NOTHING",
            dialect,
        ),
        (origin, room_id, event_id, int(ts_ms)),
    )
    for chunk in _chunks(keys, _CHUNK):
        placeholders = ", ".join(["(?, ?)"] * len(chunk))
        txn.execute(
            sql(
                f"INSERT INTO {TABLE} (fp, origin) VALUES {placeholders} "
                "ON CONFLICT (fp) DO NOTHING",
                dialect,
            ),
            [v for k in chunk for v in (k, origin)],
        )


def _strength(matched: frozenset[str]) -> tuple[bool, int]:
    """Order of preference among several copied events: media/exact text, then most shared."""
    exact = any(m.startswith((MEDIA_PREFIX, HASH_PREFIX, TEXT_PREFIX)) for m in matched)
    return exact, len(matched)


def _select_in(
    txn: Any, dialect: str, select: str, column: str, keys: list[int]
) -> list[tuple[Any, ...]]:
    """Rows of ``select`` whose ``column`` is among ``keys``, in as few statements as the
    dialect allows. PostgreSQL gets all keys as one array literal (``= ANY``, what it turns
    an IN list into anyway): psycopg2 then quotes one string instead of hundreds of
    integers, half the cost of a long IN list; SQLite gets ``IN`` lists of :data:`_CHUNK`."""
    if dialect == "postgres":
        txn.execute(
            f"{select} WHERE {column} = ANY(%s::bigint[])",
            ("{" + ",".join(map(str, keys)) + "}",),
        )
        return list(txn.fetchall())
    rows: list[tuple[Any, ...]] = []
    for chunk in _chunks(keys, _CHUNK):
        txn.execute(f"{select} WHERE {column} IN ({', '.join(['?'] * len(chunk))})", chunk)
        rows.extend(txn.fetchall())
    return rows


def _probe(txn: Any, dialect: str, wanted: dict[int, str], by_origin: dict[int, set[str]]) -> None:
    """Add to ``by_origin`` which of ``wanted`` are stored, under their origin ids: one
    primary-key probe per key and nothing else (joining the origin table here made
    PostgreSQL hash the whole of it; a correlated subquery per matched row cost more than
    the separate origin lookup)."""
    if not wanted:
        return
    for fp, origin in _select_in(
        txn, dialect, f"SELECT fp, origin FROM {TABLE}", "fp", list(wanted)
    ):
        fingerprint = wanted.get(int(fp))
        if fingerprint is not None and origin is not None:
            by_origin.setdefault(int(origin), set()).add(fingerprint)


def _best_foreign(
    txn: Any, dialect: str, copies: dict[int, set[str]], room_id: str
) -> ForeignMatch | None:
    """Among the origin events this content copies, the best one outside ``room_id``."""
    if not copies:
        return None
    select = f"SELECT id, room_id, event_id FROM {ORIGIN_TABLE}"
    origins = {int(i): (r, e) for i, r, e in _select_in(txn, dialect, select, "id", list(copies))}
    best: ForeignMatch | None = None
    for origin, matched in copies.items():
        origin_room, origin_event = origins.get(origin, (None, None))
        if origin_room is None or origin_room == room_id:
            continue  # the room's own content, or (never written so) a row without origin
        found = ForeignMatch(origin_room, origin_event, frozenset(matched))
        if best is None or _strength(found.matched) > _strength(best.matched):
            best = found
    return best


def find_foreign(
    txn: Any,
    dialect: str,
    fingerprints: Fingerprints,
    extra: Iterable[str],
    room_id: str,
) -> ForeignMatch | None:
    """The protected event outside ``room_id`` that this content copies, or None.

    ``extra`` adds fingerprints the content alone doesn't show, such as ``h:<sha256>`` of
    its uploads. The decision rule is applied per origin event, not to everything matched
    at once: a message sharing a few common phrases with each of many protected messages is
    not a copy of any of them. When several events qualify, a media or exact-text match
    wins, then the most shared fingerprints.

    A long candidate (one with a :func:`shingle_sample`) is probed in two phases: first its
    media, texts, extras and sample; then, only for origins not already found copied and
    only when the sample had hits, the neighbours of those hits (:func:`shingle_neighbours`),
    which completes every chain that can satisfy rule 3. Rule 4 counts on the sample, so
    the decision is the same as probing every key. For such a candidate ``matched`` holds
    what was probed: all media and texts, the sample's shingles and the neighbours probed.
    """
    check_dialect(dialect)
    sample = shingle_sample(fingerprints)
    first = fingerprints.shingles if sample is None else sample
    wanted = _keys((*fingerprints.media, *fingerprints.text, *extra), first)
    if not wanted:
        return None
    by_origin: dict[int, set[str]] = {}
    _probe(txn, dialect, wanted, by_origin)
    # the rule per origin event; only events it makes this a copy of are looked up
    copies = {o: m for o, m in by_origin.items() if is_foreign_copy(fingerprints, m)}
    best = _best_foreign(txn, dialect, copies, room_id)
    if best is not None or sample is None:
        return best
    # phase two: the chains around the sample's hits with every origin not yet a copy
    hits = {s for o, m in by_origin.items() if o not in copies for s in m if s in sample}
    more = shingle_neighbours(fingerprints, hits) - set(wanted.values())
    if not more:
        return None
    undecided = {o: m for o, m in by_origin.items() if o not in copies}
    _probe(txn, dialect, _keys((), more), undecided)
    copies = {
        o: m for o, m in undecided.items() if o not in copies and is_foreign_copy(fingerprints, m)
    }
    return _best_foreign(txn, dialect, copies, room_id)
