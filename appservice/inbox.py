"""The event inbox: every delivered event the on-call and clinical services act on — a page
to an on-duty role, a reply or reaction acknowledging a page, a command (``!ack``, ``!oncall``,
``!call``, ``!case`` …), the invite that brings a role account or the bot into a conversation
— is written to the appservice database (``event_inbox``, appservice.migrations upgrade 6)
before the homeserver's transaction that carried it is answered (a taker of
appservice.intake), and handled from there exactly once.

mautrix answers the transaction first and runs the handlers after; the homeserver never sends
an answered transaction again. Without the inbox, a nurse's page accepted just before the
appservice was killed reached nobody, and nobody was told. Now:

- the live path is unchanged — the handler runs for the delivered event — but an event the
  inbox holds is marked done when its handler has finished, and one found done already (a
  transaction the homeserver sent again after a restart) is not handled again;
- at start, before the service says it is ready, every event still not done is handled, in
  the order it arrived, each with a WARNING naming it; the homeserver's transactions that come
  meanwhile wait, so a later acknowledgement never overtakes the page it acknowledges;
- an event whose handling was cut off at ``MAX_RESUMES`` starts (it took the appservice down
  with it each time) is given up with an ERROR instead of crashing every start, and its
  sender is told in its room to phone instead.

Which events: carematrix.intake decides from the event alone (invites of our accounts,
commands, and members' messages and reactions), the on-call service from its records (the
message pages a role of its room, the reply or reaction is on a page). Chat in the ward rooms
the service sits in is not written down. A row keeps the event as delivered until it is done,
then only its ID (a redelivery is recognised) for ``KEEP_DONE_MS``; then it is deleted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from mautrix.appservice import AppServiceServerMixin
from mautrix.types import JSON, Event, EventType, SerializerError
from mautrix.util.async_db import Database

from appservice.db import transaction
from carematrix.intake import Interest, interest

log = logging.getLogger("carematrix.appservice.inbox")

#: Done rows are kept this long (a redelivered event is recognised as handled), then deleted.
KEEP_DONE_MS = 7 * 24 * 3600 * 1000
#: Starts at which an event's handling was taken up again and never finished, before it is
#: given up (each start after the first follows a crash that event may have caused).
MAX_RESUMES = 3
PENDING, DONE = "pending", "done"


@dataclass(frozen=True)
class InboxRow:
    event_id: str
    room_id: str
    sender: str
    kind: str  # carematrix.intake's: invite, command, message, reaction
    event: dict[str, Any]  # as delivered; {} once done
    received_at: int  # ms since the epoch
    resumes: int  # starts that took it up again


def _now_ms() -> int:
    return int(time.time() * 1000)


class InboxStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def accept(self, events: list[tuple[Interest, dict[str, Any]]]) -> dict[str, bool]:
        """The events of one transaction, in one database transaction, in the order they came;
        one already here (a redelivery) is left as it is. For each: whether it is done."""
        now = _now_ms()
        done: dict[str, bool] = {}
        async with transaction(self.db) as conn:
            for found, raw in events:
                await conn.execute(
                    "INSERT INTO event_inbox (event_id, room_id, sender, kind, event, received_at) "
                    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
                    found.event_id, found.room_id, found.sender, found.kind, json.dumps(raw), now,
                )
                done_at = await conn.fetchval("SELECT done_at FROM event_inbox WHERE event_id = $1", found.event_id)
                done[found.event_id] = done_at is not None
        return done

    async def pending(self) -> list[InboxRow]:
        """Events not done, in the order they arrived."""
        rows = await self.db.fetch("SELECT * FROM event_inbox WHERE done_at IS NULL ORDER BY id")
        return [_row(r) for r in rows]

    async def resumed(self, event_id: str) -> int:
        """A start takes this event up again: counted before its handler runs, so one that
        takes the appservice down is counted too. The new count."""
        async with transaction(self.db) as conn:
            await conn.execute("UPDATE event_inbox SET resumes = resumes + 1 WHERE event_id = $1", event_id)
            return int(await conn.fetchval("SELECT resumes FROM event_inbox WHERE event_id = $1", event_id) or 0)

    async def done(self, event_id: str) -> None:
        """Handled: the event's content is no longer kept; done rows of long ago go."""
        now = _now_ms()
        await self.db.execute("UPDATE event_inbox SET done_at = $2, event = '{}' WHERE event_id = $1", event_id, now)
        await self.db.execute("DELETE FROM event_inbox WHERE done_at < $1", now - KEEP_DONE_MS)


def _row(r: Any) -> InboxRow:
    return InboxRow(
        event_id=r["event_id"], room_id=r["room_id"], sender=r["sender"], kind=r["kind"],
        event=json.loads(r["event"]), received_at=int(r["received_at"]), resumes=int(r["resumes"]),
    )


class EventInbox:
    """A taker of appservice.intake; ``acts_on`` says whether a member's message or reaction
    is one the service acts on (OncallService.acts_on)."""

    what: str = "pages, acknowledgements and commands"
    # Every event a handler acts on has one of these in its JSON (a message, a reaction, an invite).
    needles: tuple[bytes, ...] = (b'"m.room.message"', b'"m.reaction"', b'"invite"')

    def __init__(self, store: InboxStore, bot: str, server: str, acts_on: Callable[[Interest], Awaitable[bool]]) -> None:
        self.store = store
        self.bot = bot
        self.server = server
        self.acts_on = acts_on
        # Written down by this process and not yet taken by their handler: whether each was
        # done already when it came (a transaction the homeserver sent again).
        self._written: dict[str, bool] = {}

    async def wanted(self, events: list[Any]) -> list[tuple[Interest, dict[str, Any]]]:
        """The events of a transaction (JSON) the service acts on, in order."""
        found = []
        for raw in events:
            event = interest(raw, self.bot, self.server)
            if event is not None and (event.certain or await self.acts_on(event)):
                found.append((event, raw))
        return found

    async def accept(self, events: list[Any]) -> int:
        found = await self.wanted(events)
        if found:
            self._written.update(await self.store.accept(found))
        return len(found)

    def take(self, event_id: str | None) -> str | None:
        """Called once by the handler of a delivered event: ``PENDING`` (handle it, then
        ``done``), ``DONE`` (handled before: skip it) or None (not in the inbox)."""
        if not event_id or event_id not in self._written:
            return None
        return DONE if self._written.pop(event_id) else PENDING

    async def done(self, event_id: str) -> None:
        await self.store.done(event_id)

    async def resume(
        self, rows: list[InboxRow], first_time: Callable[[str], bool], handle: Callable[[Event], Awaitable[None]],
        not_handled: Callable[[InboxRow], Awaitable[None]],
    ) -> int:
        """Handle the events of ``rows`` (not done when the appservice started), in order;
        an event already under way in this process (``first_time`` false: the homeserver
        delivered it again) is left to that. One given up (or unreadable) goes to
        ``not_handled``, which tells its sender. How many were handled."""
        handled = 0
        for row in rows:
            if not first_time(row.event_id):
                continue
            resumes = await self.store.resumed(row.event_id)
            if resumes > MAX_RESUMES:
                log.error(
                    "%s %s from %s in %s (accepted %s): taken up again at %d starts and never finished; given up, not handled",
                    row.kind, row.event_id, row.sender, row.room_id, _when(row.received_at), resumes - 1,
                )
                await self.store.done(row.event_id)
                await not_handled(row)
                continue
            log.warning(
                "taking up %s %s from %s in %s, accepted %s before the restart: its handling had not finished",
                row.kind, row.event_id, row.sender, row.room_id, _when(row.received_at),
            )
            try:
                event = _event(row.event)
            except (SerializerError, KeyError, ValueError, TypeError) as exc:
                log.error("%s %s in %s cannot be read back (%s); not handled", row.kind, row.event_id, row.room_id, exc)
                await self.store.done(row.event_id)
                await not_handled(row)
                continue
            await handle(event)
            await self.store.done(row.event_id)
            handled += 1
        return handled


def _event(raw: dict[str, Any]) -> Event:
    """The event as mautrix hands it to the handlers (as_handler.handle_transaction)."""
    AppServiceServerMixin._fix_prev_content(cast(JSON, raw))
    event = Event.deserialize(raw)
    state = getattr(event, "state_key", None) is not None
    event.type = event.type.with_class(EventType.Class.STATE if state else EventType.Class.MESSAGE)
    return event


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))
