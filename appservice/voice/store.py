"""The voice queue in the appservice database (``voice_job``, appservice.migrations upgrade 5).

A voice message is written here before the homeserver's transaction that carried it is
answered (see ``VoiceService.accept``): once the homeserver has its 200 it never sends the
event again, so a row written later — by an event handler, which mautrix runs after the
answer — would be lost with a crash in between. A row stays pending until its transcript
or notice is posted; the appservice resumes pending rows at start.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from mautrix.util.async_db import Database

from appservice.db import transaction

#: Answered rows are kept this long (a redelivered voice message is recognised as answered),
#: then deleted.
KEEP_ANSWERED_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class VoiceRow:
    event_id: str
    room_id: str
    sender: str
    content: dict[str, Any]
    received_at: int  # ms since the epoch
    attempts: int  # recognitions started that never returned
    problem: str | None  # a notice decided and not yet posted
    done: bool


def _now_ms() -> int:
    return int(time.time() * 1000)


class VoiceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def accept(self, messages: list[tuple[str, str, str, dict[str, Any]]]) -> None:
        """(event ID, room, sender, content) of each voice message of one transaction, in one
        database transaction; a message already here (a redelivery) is left as it is."""
        now = _now_ms()
        async with transaction(self.db) as conn:
            for event_id, room_id, sender, content in messages:
                await conn.execute(
                    "INSERT INTO voice_job (event_id, room_id, sender, content, received_at) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
                    event_id, room_id, sender, json.dumps(content), now,
                )

    async def get(self, event_id: str) -> VoiceRow | None:
        row = await self.db.fetchrow("SELECT * FROM voice_job WHERE event_id = $1", event_id)
        return _row(row) if row else None

    async def pending(self) -> list[VoiceRow]:
        rows = await self.db.fetch("SELECT * FROM voice_job WHERE done_at IS NULL ORDER BY received_at, event_id")
        return [_row(r) for r in rows]

    async def started(self, event_id: str) -> int:
        """A recognition of this message is about to start: counted before it starts, so one
        that kills the worker or the whole appservice is counted too. The new count."""
        async with transaction(self.db) as conn:
            await conn.execute("UPDATE voice_job SET attempts = attempts + 1 WHERE event_id = $1", event_id)
            return int(await conn.fetchval("SELECT attempts FROM voice_job WHERE event_id = $1", event_id) or 0)

    async def not_started(self, event_id: str) -> None:
        """A recognition counted by ``started`` was called off by a stop, not by a death."""
        await self.db.execute(
            "UPDATE voice_job SET attempts = attempts - 1 WHERE event_id = $1 AND attempts > 0", event_id
        )

    async def returned(self, event_id: str) -> None:
        """The recogniser came back (with words or a problem): it does not die on this one."""
        await self.db.execute("UPDATE voice_job SET attempts = 0 WHERE event_id = $1", event_id)

    async def set_problem(self, event_id: str, problem: str) -> None:
        await self.db.execute("UPDATE voice_job SET problem = $2 WHERE event_id = $1", event_id, problem)

    async def done(self, event_id: str) -> None:
        """Answered: the file's URL and info are no longer kept; answered rows of long ago go."""
        now = _now_ms()
        await self.db.execute(
            "UPDATE voice_job SET done_at = $2, content = '{}' WHERE event_id = $1", event_id, now
        )
        await self.db.execute("DELETE FROM voice_job WHERE done_at < $1", now - KEEP_ANSWERED_MS)


def _row(r: Any) -> VoiceRow:
    return VoiceRow(
        event_id=r["event_id"], room_id=r["room_id"], sender=r["sender"], content=json.loads(r["content"]),
        received_at=int(r["received_at"]), attempts=int(r["attempts"]), problem=r["problem"],
        done=r["done_at"] is not None,
    )
