"""Burn-after-read bookkeeping: every message that must be purged, until it has been.

A pending burn is written in the same check that accepts the message, before the client is
answered, so a restart never forgets one. The deadline is fixed at send time (time-to-live);
reading by every intended recipient brings it forward to read time plus the grace period.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from carematrix.hsdb.audit_store import sql

BURN = "carematrix_burn"


@dataclass(frozen=True)
class PendingBurn:
    event_id: str
    room_id: str
    sender: str
    sent_at: int  # ms
    grace_ms: int
    deadline: int  # ms: sent_at + time-to-live
    recipients: tuple[str, ...]
    media: tuple[str, ...]  # mxc URIs of the message's files and thumbnails
    all_read_at: int | None
    burn_at: int  # ms: min(deadline, all_read_at + grace)


def add(txn: Any, dialect: str, burn: PendingBurn) -> None:
    txn.execute(
        sql(
            f"INSERT INTO {BURN} (event_id, room_id, sender, sent_at, grace_ms, deadline, recipients, "
            "media, all_read_at, burn_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (event_id) DO NOTHING",
            dialect,
        ),
        (
            burn.event_id, burn.room_id, burn.sender, burn.sent_at, burn.grace_ms, burn.deadline,
            json.dumps(list(burn.recipients)), json.dumps(list(burn.media)), burn.all_read_at, burn.burn_at,
        ),
    )


def pending(txn: Any, dialect: str, limit: int = 500) -> list[PendingBurn]:
    txn.execute(
        sql(
            "SELECT event_id, room_id, sender, sent_at, grace_ms, deadline, recipients, media, "
            f"all_read_at, burn_at FROM {BURN} WHERE burned_at IS NULL ORDER BY burn_at LIMIT ?",
            dialect,
        ),
        (limit,),
    )
    out = []
    for row in txn.fetchall():
        out.append(
            PendingBurn(
                row[0], row[1], row[2], row[3], row[4], row[5],
                tuple(json.loads(row[6])), tuple(json.loads(row[7])), row[8], row[9],
            )
        )
    return out


def mark_all_read(txn: Any, dialect: str, event_id: str, read_at: int, burn_at: int) -> None:
    txn.execute(
        sql(f"UPDATE {BURN} SET all_read_at = ?, burn_at = ? WHERE event_id = ? AND all_read_at IS NULL", dialect),
        (read_at, burn_at, event_id),
    )


def mark_burned(txn: Any, dialect: str, event_id: str, burned_at: int, outcome: str) -> None:
    txn.execute(
        sql(f"UPDATE {BURN} SET burned_at = ?, outcome = ? WHERE event_id = ?", dialect),
        (burned_at, outcome[:200], event_id),
    )


def burned(txn: Any, dialect: str, event_id: str) -> bool:
    """Has ``event_id`` burned already?"""
    txn.execute(sql(f"SELECT 1 FROM {BURN} WHERE event_id = ? AND burned_at IS NOT NULL", dialect), (event_id,))
    return txn.fetchone() is not None


def burn_time(burn: PendingBurn, read_at: int | None) -> int:
    """When to purge: at the deadline, or ``grace`` after everyone read it if that is sooner."""
    if read_at is None:
        return burn.deadline
    return min(burn.deadline, read_at + burn.grace_ms)


def unread_by(recipients: Sequence[str], readers: set[str]) -> list[str]:
    return [r for r in recipients if r not in readers]
