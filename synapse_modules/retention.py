"""What the homeserver's retention purge jobs will delete, for admins to see beforehand
(``carematrix retention report``).

Each room's lifetime comes from its ``m.room.retention`` state, which the policy module sets
from the room class; Synapse's purge jobs delete messages older than that. This reads
Synapse's own tables in the homeserver database (through synapse_modules/adapter/tables.py),
like ``carematrix audit verify`` reads ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synapse_modules.adapter.tables import message_ages, rooms_with_lifetime


@dataclass(frozen=True)
class RoomRetention:
    room_id: str
    name: str | None
    max_lifetime_ms: int
    due_now: int  # messages already past their lifetime (purged at the next job)
    due_soon: int  # messages that pass it within the horizon
    oldest_ts: int | None


def retention_report(txn: Any, dialect: str, now_ms: int, horizon_ms: int) -> list[RoomRetention]:
    out = []
    for room_id, name, lifetime in rooms_with_lifetime(txn, dialect):
        due_now, due_soon, oldest = message_ages(txn, dialect, room_id, now_ms - lifetime, horizon_ms)
        out.append(RoomRetention(room_id, name, lifetime, due_now, due_soon, oldest))
    return out


def render(rows: list[RoomRetention], horizon_days: int) -> str:
    from carematrix.policy.rooms import format_duration

    if not rows:
        return "No room has a message lifetime; nothing will be purged."
    lines = [f"{'room':<44} {'lifetime':>8} {'past it':>8} {f'next {horizon_days}d':>8}  name"]
    for r in rows:
        lines.append(
            f"{r.room_id:<44} {format_duration(r.max_lifetime_ms // 1000):>8} {r.due_now:>8} "
            f"{r.due_soon:>8}  {r.name or ''}"
        )
    total_now = sum(r.due_now for r in rows)
    total_soon = sum(r.due_soon for r in rows)
    lines.append(
        f"{len(rows)} rooms with a lifetime: {total_now} messages are past it (deleted at the next "
        f"purge job), {total_soon} more within {horizon_days} days."
    )
    return "\n".join(lines)
