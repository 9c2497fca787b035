"""Where protected content was first posted, on any DB-API cursor in SQLite or PostgreSQL.

Same conventions as :mod:`carematrix.audit.store`: every function takes the transaction's
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

A check is one statement: a primary-key probe per key (``fp IN (...)`` in chunks of 500
on SQLite, ``fp = ANY(array)`` on PostgreSQL), plus an origin probe per key that exists.
With a million fingerprints stored it costs well under a millisecond for a typical
message (``python -m bench.no_forward``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from carematrix.audit.store import check_dialect, sql
from carematrix.protect.fingerprint import (
    HASH_PREFIX,
    MEDIA_PREFIX,
    SHINGLE_PREFIX,
    TEXT_PREFIX,
    Fingerprints,
    is_foreign_copy,
)

TABLE = "carematrix_protected_fingerprint"
ORIGIN_TABLE = "carematrix_protected_origin"

# Keys per statement: far below SQLite's oldest variable limit (999) and PostgreSQL's.
_CHUNK = 500
_SHINGLE_LEN = len(SHINGLE_PREFIX) + 16
_HEX64 = re.compile(r"[0-9a-f]{16}")
# pg_advisory_xact_lock key that serialises ensure_schema across worker processes.
_SCHEMA_LOCK_KEY = 0x63615F70_726F7465


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


def _ddl(dialect: str) -> list[str]:
    # SQLite: INTEGER PRIMARY KEY is the rowid (no separate index); BIGINT would not be.
    int_key = "INTEGER PRIMARY KEY" if dialect == "sqlite" else "BIGINT PRIMARY KEY"
    return [
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
            fp {int_key},
            origin BIGINT NOT NULL
        )""",
        f"""CREATE TABLE IF NOT EXISTS {ORIGIN_TABLE} (
            id {int_key},
            room_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            ts BIGINT NOT NULL
        )""",
    ]


def ensure_schema(txn: Any, dialect: str) -> None:
    """Create the tables if missing; safe to run at every start of every worker.

    On PostgreSQL a transaction-scoped advisory lock makes concurrent starts take turns
    (two concurrent ``CREATE TABLE IF NOT EXISTS`` can otherwise fail on the catalog).
    """
    check_dialect(dialect)
    if dialect == "postgres":
        txn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
        txn.fetchall()
    for statement in _ddl(dialect):
        txn.execute(statement)


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
    keys = sorted({key(f) for f in fingerprints if isinstance(f, str) and f})
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


def _lookup(txn: Any, dialect: str, keys: list[int]) -> list[tuple[Any, Any, Any]]:
    """(key, origin room, origin event) of every stored key among ``keys``.

    The origin comes from correlated subqueries, i.e. one primary-key probe per *stored*
    match: as a join, PostgreSQL's planner picks a hash join that reads the whole origin
    table (8 ms at a million fingerprints). PostgreSQL gets all keys as one array literal
    (``= ANY``, what it turns an IN list into anyway): psycopg2 then quotes one string
    instead of hundreds of integers, half the cost of a long IN list.
    """
    select = (
        f"SELECT f.fp, (SELECT o.room_id FROM {ORIGIN_TABLE} o WHERE o.id = f.origin), "
        f"(SELECT o.event_id FROM {ORIGIN_TABLE} o WHERE o.id = f.origin) FROM {TABLE} f "
    )
    if dialect == "postgres":
        txn.execute(
            select + "WHERE f.fp = ANY(%s::bigint[])",
            ("{" + ",".join(map(str, keys)) + "}",),
        )
        return list(txn.fetchall())
    rows: list[tuple[Any, Any, Any]] = []
    for chunk in _chunks(keys, _CHUNK):
        txn.execute(select + f"WHERE f.fp IN ({', '.join(['?'] * len(chunk))})", chunk)
        rows.extend(txn.fetchall())
    return rows


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
    """
    check_dialect(dialect)
    wanted: dict[int, str] = {}
    for fingerprint in (*fingerprints.all(), *extra):
        if isinstance(fingerprint, str) and fingerprint:
            wanted[key(fingerprint)] = fingerprint
    if not wanted:
        return None
    by_origin: dict[tuple[str, str], set[str]] = {}
    for fp, origin_room, origin_event in _lookup(txn, dialect, list(wanted)):
        if origin_room is None or origin_room == room_id:
            continue  # the room's own content, or (never written so) a row without origin
        fingerprint = wanted.get(int(fp))
        if fingerprint is not None:
            by_origin.setdefault((origin_room, origin_event), set()).add(fingerprint)
    best: ForeignMatch | None = None
    for (origin_room, origin_event), matched in by_origin.items():
        if not is_foreign_copy(fingerprints, matched):
            continue
        found = ForeignMatch(origin_room, origin_event, frozenset(matched))
        if best is None or _strength(found.matched) > _strength(best.matched):
            best = found
    return best
