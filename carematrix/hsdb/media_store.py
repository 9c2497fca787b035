"""Which media were posted in protected rooms, and who was served a watermarked copy when.

The media gate asks "is this media protected, and where was it posted?" on every download,
so the answer lives in the homeserver database (shared by all workers), keyed by media ID.
Functions take the transaction's cursor and the dialect, like :mod:`carematrix.hsdb.audit_store`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from carematrix.hsdb.audit_store import sql

MEDIA = "carematrix_protected_media"
DELIVERY = "carematrix_watermark_delivery"


@dataclass(frozen=True)
class ProtectedPosting:
    media_id: str
    room_id: str
    event_id: str
    # "image" (served watermarked) or "file" (served per ``other_files``).
    kind: str
    # The class's policy for non-image files when posted: "audited" or "block".
    other_files: str


@dataclass(frozen=True)
class Delivery:
    """One watermarked rendering: the mark ID the hidden pattern was keyed with."""

    mark_id: str
    media_id: str
    user_id: str
    minute: int  # Unix seconds at the start of the minute
    first_served_at: int  # ms


def record_postings(txn: Any, dialect: str, postings: Iterable[ProtectedPosting], ts_ms: int) -> None:
    rows = [(p.media_id, p.room_id, p.event_id, p.kind, p.other_files, ts_ms) for p in postings]
    if rows:
        txn.executemany(
            sql(
                f"INSERT INTO {MEDIA} (media_id, room_id, event_id, kind, other_files, posted_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (media_id, room_id) DO NOTHING",
                dialect,
            ),
            rows,
        )


def postings_of(txn: Any, dialect: str, media_id: str) -> list[ProtectedPosting]:
    txn.execute(
        sql(f"SELECT media_id, room_id, event_id, kind, other_files FROM {MEDIA} WHERE media_id = ?", dialect),
        (media_id,),
    )
    return [ProtectedPosting(*row) for row in txn.fetchall()]


def forget_media(txn: Any, dialect: str, media_ids: Iterable[str]) -> None:
    for media_id in media_ids:
        txn.execute(sql(f"DELETE FROM {MEDIA} WHERE media_id = ?", dialect), (media_id,))


def record_delivery(txn: Any, dialect: str, delivery: Delivery) -> None:
    txn.execute(
        sql(
            f"INSERT INTO {DELIVERY} (mark_id, media_id, user_id, minute, first_served_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (mark_id) DO NOTHING",
            dialect,
        ),
        (delivery.mark_id, delivery.media_id, delivery.user_id, delivery.minute, delivery.first_served_at),
    )


def deliveries(txn: Any, dialect: str, media_id: str | None = None) -> list[Delivery]:
    """Every rendering (of one media, or of all), oldest first: the candidates of a trace."""
    query = f"SELECT mark_id, media_id, user_id, minute, first_served_at FROM {DELIVERY}"
    args: tuple[Any, ...] = ()
    if media_id is not None:
        query += " WHERE media_id = ?"
        args = (media_id,)
    txn.execute(sql(query + " ORDER BY minute, mark_id", dialect), args)
    return [Delivery(*row) for row in txn.fetchall()]


def latest_received(txn: Any, dialect: str, user_id: str, media_ids: Sequence[str]) -> dict[str, int]:
    """The minute of the last rendering ``user_id`` received of each of ``media_ids`` (those
    they received): what they would forward is most likely that copy."""
    if not media_ids:
        return {}
    marks = ", ".join(["?"] * len(media_ids))
    txn.execute(sql(f"SELECT media_id, max(minute) FROM {DELIVERY} WHERE user_id = ? AND media_id IN ({marks}) "
                    "GROUP BY media_id", dialect), (user_id, *media_ids))
    return {str(media_id): int(minute) for media_id, minute in txn.fetchall()}


def mark_id_for(media_id: str, user_id: str, minute: int) -> str:
    """One hidden-mark pattern per (media, viewer, minute): renderings in the same minute are
    identical (and cacheable), and a trace names the viewer and the minute."""
    return f"{media_id}|{user_id}|{minute}"
