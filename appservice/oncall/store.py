"""Durable on-call state in the appservice database (SQLite or PostgreSQL through mautrix's
Database): the roster each feed last delivered, overrides, open pages and an outbox of
Matrix sends, so a restart resumes escalations with their deadlines and repeats nothing.
The tables are made by appservice.migrations."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from mautrix.util.async_db import Database

from appservice.db import transaction
from carematrix.oncall.escalation import Action, Page
from carematrix.oncall.model import Override, Shift
from carematrix.oncall.send_order import Queued


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


class OncallStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- roster -------------------------------------------------------------------------

    async def replace_feed(self, feed_id: str, shifts: list[Shift], digest: str, now: datetime) -> None:
        """A validated feed replaces that feed's previous shifts in one transaction, written in
        one batch: the connection is shared with the HL7 intake, whose ACKs wait meanwhile
        (every policy edit re-reads every feed)."""
        async with transaction(self.db) as conn:
            await conn.execute("DELETE FROM oncall_shift WHERE feed_id = $1", feed_id)
            if shifts:
                await conn.executemany(
                    "INSERT INTO oncall_shift (feed_id, role, staff_number, start_ts, end_ts, source) "
                    "VALUES ($1, $2, $3, $4, $5, $6)",
                    [(feed_id, s.role, s.staff_number, _ms(s.start), _ms(s.end), s.source) for s in shifts],
                )
            await self._feed_row(conn, feed_id, digest, now, None)

    async def feed_failed(self, feed_id: str, error: str, now: datetime) -> None:
        row = await self.db.fetchrow("SELECT digest FROM oncall_feed WHERE feed_id = $1", feed_id)
        await self._feed_row(self.db, feed_id, row["digest"] if row else None, now, error)

    @staticmethod
    async def _feed_row(conn: Any, feed_id: str, digest: str | None, now: datetime, error: str | None) -> None:
        await conn.execute(
            "INSERT INTO oncall_feed (feed_id, digest, loaded_at, last_error) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (feed_id) DO UPDATE SET digest = excluded.digest, loaded_at = excluded.loaded_at, "
            "last_error = excluded.last_error",
            feed_id, digest, _ms(now), error,
        )

    async def feed_digest(self, feed_id: str) -> str | None:
        row = await self.db.fetchrow("SELECT digest FROM oncall_feed WHERE feed_id = $1", feed_id)
        return row["digest"] if row else None

    async def shifts(self) -> list[Shift]:
        rows = await self.db.fetch("SELECT role, staff_number, start_ts, end_ts, source FROM oncall_shift")
        return [Shift(r["role"], r["staff_number"], _dt(r["start_ts"]), _dt(r["end_ts"]), r["source"]) for r in rows]  # type: ignore[arg-type]

    async def add_override(self, override_id: str, o: Override) -> None:
        await self.db.execute(
            "INSERT INTO oncall_override (id, role, staff_number, start_ts, end_ts, replaces, by_staff, kind) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            override_id, o.role, o.staff_number, _ms(o.start), _ms(o.end), o.replaces, o.by, o.kind,
        )

    async def overrides(self) -> list[Override]:
        rows = await self.db.fetch(
            "SELECT role, staff_number, start_ts, end_ts, replaces, by_staff, kind FROM oncall_override ORDER BY start_ts"
        )
        return [
            Override(r["role"], r["staff_number"], _dt(r["start_ts"]), _dt(r["end_ts"]), r["replaces"], r["by_staff"], r["kind"])  # type: ignore[arg-type]
            for r in rows
        ]

    # -- role rooms ---------------------------------------------------------------------

    async def set_role_room(self, room_id: str, role: str, requester: str, direct: bool) -> None:
        await self.db.execute(
            "INSERT INTO oncall_role_room (room_id, role, requester, direct) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (room_id, role) DO NOTHING",
            room_id, role, requester, 1 if direct else 0,
        )

    async def role_rooms(self, room_id: str) -> list[tuple[str, bool]]:
        """The roles present in a room, and whether it is a direct chat with that role."""
        rows = await self.db.fetch("SELECT role, direct FROM oncall_role_room WHERE room_id = $1 ORDER BY role", room_id)
        return [(r["role"], bool(r["direct"])) for r in rows]

    async def set_quiet_pref(self, staff_number: str, quiet: bool) -> None:
        await self.db.execute(
            "INSERT INTO oncall_quiet_pref (staff_number, quiet) VALUES ($1, $2) "
            "ON CONFLICT (staff_number) DO UPDATE SET quiet = excluded.quiet",
            staff_number, 1 if quiet else 0,
        )

    async def quiet_prefs(self) -> dict[str, bool]:
        rows = await self.db.fetch("SELECT staff_number, quiet FROM oncall_quiet_pref")
        return {r["staff_number"]: bool(r["quiet"]) for r in rows}

    async def last_holders(self, role: str) -> list[str] | None:
        row = await self.db.fetchrow("SELECT holders FROM oncall_holders WHERE role = $1", role)
        return json.loads(row["holders"]) if row else None

    async def set_last_holders(self, role: str, holders: tuple[str, ...]) -> None:
        await self.db.execute(
            "INSERT INTO oncall_holders (role, holders) VALUES ($1, $2) "
            "ON CONFLICT (role) DO UPDATE SET holders = excluded.holders",
            role, json.dumps(list(holders)),
        )

    async def recent_rooms(self, role: str, since: datetime) -> list[str]:
        """Rooms where ``role`` was paged since ``since``: the conversations a hand-over
        brings the incoming holder into."""
        rows = await self.db.fetch(
            "SELECT DISTINCT room_id FROM oncall_page WHERE role = $1 AND created_at >= $2 ORDER BY room_id",
            role, _ms(since),
        )
        return [r["room_id"] for r in rows]

    # -- pages --------------------------------------------------------------------------

    async def save_page(self, page: Page, actions: list[tuple[str, Action]]) -> None:
        """The page's new state and the sends it implies commit together (the outbox)."""
        async with transaction(self.db) as conn:
            await conn.execute(
                "INSERT INTO oncall_page (page_id, role, sender, room_id, event_id, created_at, step, "
                "step_deadline, paged, acked_by, acked_at, state, priority, subject, lead, role_name) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) "
                "ON CONFLICT (page_id) DO UPDATE SET step = excluded.step, "
                "step_deadline = excluded.step_deadline, paged = excluded.paged, acked_by = excluded.acked_by, "
                "acked_at = excluded.acked_at, state = excluded.state, lead = excluded.lead",
                page.page_id, page.role, page.sender, page.room_id, page.event_id, _ms(page.created_at),
                page.step, _ms(page.step_deadline) if page.step_deadline else None, json.dumps(list(page.paged)),
                page.acked_by, _ms(page.acked_at) if page.acked_at else None, page.state,
                page.priority, page.subject, page.lead, page.role_name,
            )
            for txn_id, action in actions:
                await conn.execute(
                    "INSERT INTO oncall_outbox (txn_id, page_id, action, sent) VALUES ($1, $2, $3, 0) "
                    "ON CONFLICT (txn_id) DO NOTHING",
                    txn_id, page.page_id, json.dumps(_action_json(action)),
                )

    async def pages(self, state: str | None = "open") -> list[Page]:
        query = "SELECT * FROM oncall_page" + (" WHERE state = $1" if state else "")
        rows = await (self.db.fetch(query, state) if state else self.db.fetch(query))
        return [_page(r) for r in rows]

    async def closed_since(self, since: datetime, limit: int = 50) -> list[Page]:
        """Pages opened since ``since`` that are no longer open, newest first (the console
        shows what was acknowledged or ran out lately beside what is open)."""
        rows = await self.db.fetch(
            "SELECT * FROM oncall_page WHERE state <> 'open' AND created_at >= $1 ORDER BY created_at DESC LIMIT $2",
            _ms(since), limit,
        )
        return [_page(r) for r in rows]

    async def pages_between(self, since: datetime, until: datetime) -> list[Page]:
        """Pages opened in [since, until), oldest first (the console's alarm-fatigue report)."""
        rows = await self.db.fetch(
            "SELECT * FROM oncall_page WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at",
            _ms(since), _ms(until),
        )
        return [_page(r) for r in rows]

    async def page(self, page_id: str) -> Page | None:
        row = await self.db.fetchrow("SELECT * FROM oncall_page WHERE page_id = $1", page_id)
        return _page(row) if row else None

    async def open_pages_in(self, room_id: str) -> list[Page]:
        rows = await self.db.fetch(
            "SELECT * FROM oncall_page WHERE room_id = $1 AND state = 'open' ORDER BY created_at", room_id
        )
        return [_page(r) for r in rows]

    async def open_pages_for(self, staff_number: str) -> list[Page]:
        """Open pages that paged this person, anywhere (for ``!ack <id>``)."""
        rows = await self.db.fetch("SELECT * FROM oncall_page WHERE state IN ('open', 'exhausted') ORDER BY created_at")
        return [p for p in map(_page, rows) if staff_number in p.paged]

    async def pages_started_by(self, event_id: str) -> list[Page]:
        rows = await self.db.fetch("SELECT * FROM oncall_page WHERE event_id = $1 ORDER BY created_at", event_id)
        return [_page(r) for r in rows]

    async def add_page_notice(self, event_id: str, page_id: str, room_id: str, sent_at: datetime) -> None:
        await self.db.execute(
            "INSERT INTO oncall_page_notice (event_id, page_id, room_id, sent_at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (event_id) DO NOTHING",
            event_id, page_id, room_id, _ms(sent_at),
        )

    async def page_of_notice(self, event_id: str) -> str | None:
        return await self.db.fetchval("SELECT page_id FROM oncall_page_notice WHERE event_id = $1", event_id)

    async def page_notices_in(self, room_id: str, up_to: datetime) -> list[str]:
        """Pages with a notice in ``room_id`` sent at or before ``up_to``."""
        rows = await self.db.fetch(
            "SELECT DISTINCT page_id FROM oncall_page_notice WHERE room_id = $1 AND sent_at <= $2",
            room_id, _ms(up_to),
        )
        return [r["page_id"] for r in rows]

    async def open_pages_noticed_in(self, room_id: str) -> list[Page]:
        """Open pages with a notice in ``room_id`` (their own room, or a direct chat they were
        sent to): one query per read receipt, however many pages the room has seen."""
        rows = await self.db.fetch(
            "SELECT * FROM oncall_page WHERE state = 'open' AND page_id IN "
            "(SELECT page_id FROM oncall_page_notice WHERE room_id = $1) ORDER BY created_at",
            room_id,
        )
        return [_page(r) for r in rows]

    async def role_dm(self, role: str, staff_number: str) -> str | None:
        return await self.db.fetchval(
            "SELECT room_id FROM oncall_role_dm WHERE role = $1 AND staff_number = $2", role, staff_number
        )

    async def set_role_dm(self, role: str, staff_number: str, room_id: str) -> None:
        await self.db.execute(
            "INSERT INTO oncall_role_dm (role, staff_number, room_id) VALUES ($1, $2, $3) "
            "ON CONFLICT (role, staff_number) DO UPDATE SET room_id = excluded.room_id",
            role, staff_number, room_id,
        )

    async def mark_seen(self, page_id: str, staff_number: str, at: datetime) -> bool:
        """True the first time this person is recorded as having seen this page."""
        before = await self.db.fetchval(
            "SELECT 1 FROM oncall_page_seen WHERE page_id = $1 AND staff_number = $2", page_id, staff_number
        )
        if before:
            return False
        await self.db.execute(
            "INSERT INTO oncall_page_seen (page_id, staff_number, seen_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (page_id, staff_number) DO NOTHING",
            page_id, staff_number, _ms(at),
        )
        return True

    async def seen(self, page_id: str) -> list[tuple[str, datetime]]:
        rows = await self.db.fetch(
            "SELECT staff_number, seen_at FROM oncall_page_seen WHERE page_id = $1 ORDER BY seen_at", page_id
        )
        return [(r["staff_number"], _dt(r["seen_at"])) for r in rows]  # type: ignore[misc]

    async def unsent(self) -> list[Queued[Action]]:
        """The sends still waiting, in the order decided, each with its page's own priority
        (carematrix.oncall.send_order puts them in the order to send)."""
        rows = await self.db.fetch(
            "SELECT o.txn_id, o.page_id, o.action, p.priority FROM oncall_outbox o "
            "LEFT JOIN oncall_page p ON p.page_id = o.page_id WHERE o.sent = 0 ORDER BY o.txn_id"
        )
        queued = []
        for r in rows:
            action = _action(json.loads(r["action"]))
            queued.append(Queued(r["txn_id"], r["page_id"], r["priority"] or action.priority, action.priority, action))
        return queued

    async def actions(self, page_id: str) -> list[Action]:
        """Everything a page's transitions decided, sent or not, in the order decided (the
        outbox keeps sent rows): what escalation.roster_gaps reads."""
        rows = await self.db.fetch("SELECT action FROM oncall_outbox WHERE page_id = $1 ORDER BY txn_id", page_id)
        return [_action(json.loads(r["action"])) for r in rows]

    async def mark_sent(self, txn_id: str) -> None:
        await self.db.execute("UPDATE oncall_outbox SET sent = 1 WHERE txn_id = $1", txn_id)


def _action_json(a: Action) -> dict[str, Any]:
    return {"kind": a.kind, "staff": list(a.staff), "step": a.step, "priority": a.priority, "message": a.message}


def _action(d: dict[str, Any]) -> Action:
    return Action(kind=d["kind"], staff=tuple(d["staff"]), step=d["step"], priority=d["priority"], message=d["message"])


def _page(r: Any) -> Page:
    return Page(
        page_id=r["page_id"], role=r["role"], sender=r["sender"], room_id=r["room_id"], event_id=r["event_id"],
        created_at=_dt(r["created_at"]),  # type: ignore[arg-type]
        step=r["step"], step_deadline=_dt(r["step_deadline"]), paged=tuple(json.loads(r["paged"])),
        acked_by=r["acked_by"], acked_at=_dt(r["acked_at"]), state=r["state"],
        priority=r["priority"], subject=r["subject"], lead=r["lead"], role_name=r["role_name"],
    )
