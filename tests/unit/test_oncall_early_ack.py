"""A doctor's 👍 that arrives before the service has recorded the notice it is on.

Element shows a page notice (and lets the doctor react to it) as soon as the homeserver has
it; the service learns the notice's event ID only when its send returns, and records it as
the page's after that. A reaction handled in between used to match no page and was dropped
without a word, and the page went on escalating to people who were not needed. The homeserver
here is a stand-in that hands the reaction to the service *during* the send, which makes that
interleaving certain; the store is the real one, on SQLite. tests/e2e/test_oncall.py drives a
real homeserver, where the same race happens only now and then."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from mautrix.util.async_db import Database

from appservice import migrations
from appservice.oncall.clock import Clock
from appservice.oncall.service import OncallService
from appservice.oncall.store import OncallStore
from carematrix.oncall.escalation import Action, Page
from carematrix.policy.holder import PolicyHolder

POLICIES = Path(__file__).resolve().parents[2] / "policies"
ROOM = "!ward:localhost"
NURSE = "@n3002:localhost"
DOCTOR = "@d1002:localhost"
BOT = "@carematrix:localhost"


class Audit:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def record(self, **record: Any) -> None:
        self.records.append(record)


class Homeserver:
    """Every send succeeds. While a page notice is being sent, the doctor reacts to it: the
    reaction is handled by the service before the send returns its event ID."""

    def __init__(self, by: str = "reaction") -> None:
        self.server = "localhost"
        self.by = by  # "reaction", or "read": a read receipt for the notice
        self.sent: list[dict[str, Any]] = []
        self.oncall: OncallService | None = None
        self.reactions: list[asyncio.Task[None]] = []
        self.sent_at: dict[str, int] = {}

    def uid(self, localpart: str) -> str:
        return f"@{localpart}:{self.server}"

    async def call(self, method: str, path: str, body: Any = None, as_user: str | None = None) -> Any:
        if method == "GET" and "/state/m.room.member/" in path:
            return {"membership": "join"}  # the doctor is in the ward room already
        if path.endswith("/invite"):
            return {}
        if method == "GET" and "/event/" in path:
            return {"origin_server_ts": self.sent_at[unquote(path.rsplit("/", 1)[1])]}
        event_id = f"$notice{len(self.sent)}"
        self.sent.append({**body, "event_id": event_id})
        self.sent_at[event_id] = int(time.time() * 1000)
        if isinstance(body, dict) and body.get("org.carematrix.page") and self.oncall is not None:
            acks = self.oncall.acks
            react = acks.on_reaction(ROOM, DOCTOR, event_id) if self.by == "reaction" else acks.on_read(ROOM, DOCTOR, event_id)
            self.reactions.append(asyncio.get_running_loop().create_task(react))
            for _ in range(20):  # the reaction runs as far as it can before the send returns
                await asyncio.sleep(0)
        return {"event_id": event_id}


async def test_a_reaction_before_the_notice_is_recorded_acknowledges_that_page(tmp_path: Path):
    db = Database.create(f"sqlite:{tmp_path / 'appservice.db'}", owner_name="carematrix")
    await db.start()
    await migrations.upgrade(db)
    try:
        homeserver = Homeserver()
        audit = Audit()
        store = OncallStore(db)
        oncall = OncallService(store, PolicyHolder(POLICIES), homeserver, BOT, audit, Clock())  # type: ignore[arg-type]
        homeserver.oncall = oncall
        now = datetime.now(UTC)
        page = Page("page-k-6-9", "cardiology/attending", NURSE, ROOM, "$nurse-message", now, 0,
                    now.replace(year=now.year + 1), ("D1002",), None, None, "open", subject="Bed 9: K+ 6.9")
        await oncall.outbox.commit(page, [Action("page", ("D1002",), 0, "urgent", "Bed 9: K+ 6.9")])
        await oncall.flush()
        await asyncio.gather(*homeserver.reactions)

        saved = await store.page("page-k-6-9")
        assert saved is not None and saved.state == "acked" and saved.acked_by == "D1002", saved
        acked = [r for r in audit.records if r["action"] == "appservice.page.acknowledged"]
        assert [(r["actor"], r["details"]["page"], r["details"]["by"]) for r in acked] == [
            (DOCTOR, "page-k-6-9", "reaction")]
        await oncall.flush()  # the nurse hears who acknowledged
        assert any("acknowledged" in n["body"] and "D1002" in n["body"] for n in homeserver.sent), homeserver.sent
    finally:
        await db.stop()


async def test_a_read_receipt_before_the_notice_is_recorded_marks_it_seen_and_acknowledges(tmp_path: Path):
    """The ICU nurse role lets reading acknowledge an urgent page; a receipt that raced the
    notice's recording used to find no page noticed in the room."""
    db = Database.create(f"sqlite:{tmp_path / 'appservice.db'}", owner_name="carematrix")
    await db.start()
    await migrations.upgrade(db)
    try:
        homeserver = Homeserver(by="read")
        audit = Audit()
        store = OncallStore(db)
        oncall = OncallService(store, PolicyHolder(POLICIES), homeserver, BOT, audit, Clock())  # type: ignore[arg-type]
        homeserver.oncall = oncall
        now = datetime.now(UTC)
        page = Page("page-spo2", "icu/nurse", NURSE, ROOM, "$nurse-message", now, 0,
                    now.replace(year=now.year + 1), ("D1002",), None, None, "open", subject="Bed 2: SpO2 88%")
        await oncall.outbox.commit(page, [Action("page", ("D1002",), 0, "urgent", "Bed 2: SpO2 88%")])
        await oncall.flush()
        await asyncio.gather(*homeserver.reactions)

        seen = [r for r in audit.records if r["action"] == "appservice.page.seen"]
        assert [(r["actor"], r["details"]["page"]) for r in seen] == [(DOCTOR, "page-spo2")]
        saved = await store.page("page-spo2")
        assert saved is not None and saved.state == "acked" and saved.acked_by == "D1002", saved
    finally:
        await db.stop()
