"""Every query CareMatrix makes on Synapse's own tables.

Plain SQL on a DB-API cursor (a Synapse transaction inside the homeserver, or a bare
connection in ``carematrix retention report``): this module imports nothing from Synapse.
Statements use ``?`` placeholders; ``dialect`` converts them for a bare psycopg2 cursor
(Synapse's own transactions accept either).
"""

from __future__ import annotations

from typing import Any

from carematrix.hsdb.audit_store import sql


def media_sha256(txn: Any, media_ids: list[str]) -> dict[str, str]:
    """The SHA-256 Synapse stores for each local upload: a re-upload of the same bytes gets
    a new media ID with the same hash."""
    if not media_ids:
        return {}
    marks = ",".join("?" for _ in media_ids)
    txn.execute(
        f"SELECT media_id, sha256 FROM local_media_repository WHERE media_id IN ({marks}) "
        "AND sha256 IS NOT NULL",
        tuple(media_ids),
    )
    return {row[0]: row[1] for row in txn.fetchall()}


def known_media(txn: Any, media_ids: list[str]) -> set[str]:
    """The local uploads among ``media_ids`` Synapse still has: a burnt message's files, and
    media an admin or the media retention purged, are deleted with their row."""
    if not media_ids:
        return set()
    marks = ",".join("?" for _ in media_ids)
    txn.execute(f"SELECT media_id FROM local_media_repository WHERE media_id IN ({marks})", tuple(media_ids))
    return {row[0] for row in txn.fetchall()}


def readers_since(txn: Any, room_id: str, event_id: str) -> set[str] | None:
    """Users whose public or private read receipt in ``room_id`` is at or after ``event_id``
    (any thread), read from the database so receipts sent while nothing was listening count.
    None if the event is not stored (yet, or any more)."""
    txn.execute("SELECT stream_ordering FROM events WHERE event_id = ?", (event_id,))
    row = txn.fetchone()
    if row is None:
        return None
    txn.execute(
        "SELECT DISTINCT r.user_id FROM receipts_linearized AS r "
        "JOIN events AS e ON e.event_id = r.event_id "
        "WHERE r.room_id = ? AND r.receipt_type IN ('m.read', 'm.read.private') "
        "AND e.stream_ordering >= ?",
        (room_id, row[0]),
    )
    return {r[0] for r in txn.fetchall()}


def edits_of(txn: Any, event_id: str) -> list[str]:
    """The events that edit ``event_id`` (``m.replace``)."""
    txn.execute(
        "SELECT event_id FROM event_relations WHERE relates_to_id = ? AND relation_type = 'm.replace'",
        (event_id,),
    )
    return [r[0] for r in txn.fetchall()]


def references_to(txn: Any, event_id: str) -> list[tuple[str, str]]:
    """(event ID, sender) of the events that refer to ``event_id`` (``m.reference``)."""
    txn.execute(
        "SELECT r.event_id, e.sender FROM event_relations AS r JOIN events AS e ON e.event_id = r.event_id "
        "WHERE r.relates_to_id = ? AND r.relation_type = 'm.reference' ORDER BY e.stream_ordering",
        (event_id,),
    )
    return [(r[0], r[1]) for r in txn.fetchall()]


def drop_search_row(txn: Any, event_id: str) -> None:
    """Delete an event's row in Synapse's full-text search index."""
    txn.execute("DELETE FROM event_search WHERE event_id = ?", (event_id,))


def rooms_with_lifetime(txn: Any, dialect: str) -> list[tuple[str, str | None, int]]:
    """(room ID, room name, shortest message lifetime in ms) of every room whose
    ``m.room.retention`` state sets a lifetime, by room ID."""
    txn.execute(
        sql(
            "SELECT r.room_id, s.name, MIN(r.max_lifetime) FROM room_retention AS r "
            "LEFT JOIN room_stats_state AS s ON s.room_id = r.room_id "
            "WHERE r.max_lifetime IS NOT NULL GROUP BY r.room_id, s.name ORDER BY r.room_id",
            dialect,
        )
    )
    return [(room_id, name, int(lifetime)) for room_id, name, lifetime in txn.fetchall()]


def message_ages(txn: Any, dialect: str, room_id: str, cutoff_ms: int, horizon_ms: int) -> tuple[int, int, int | None]:
    """Of the messages (not state) in ``room_id``: how many were sent before ``cutoff_ms``,
    how many in the ``horizon_ms`` after it, and when the oldest was sent."""
    txn.execute(
        sql(
            "SELECT "
            "SUM(CASE WHEN origin_server_ts < ? THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN origin_server_ts >= ? AND origin_server_ts < ? THEN 1 ELSE 0 END), "
            "MIN(origin_server_ts) FROM events WHERE room_id = ? AND state_key IS NULL",
            dialect,
        ),
        (cutoff_ms, cutoff_ms, cutoff_ms + horizon_ms, room_id),
    )
    before, within, oldest = txn.fetchone()
    return int(before or 0), int(within or 0), oldest
