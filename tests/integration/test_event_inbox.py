"""The event inbox in the appservice database, on SQLite and PostgreSQL: what the appservice
does at start with pages, acknowledgements and commands it accepted before a crash, and the
page outbox's send order read from the real tables.

Events are handled again in the order they arrived, each with a WARNING; one the homeserver
delivered again meanwhile is left to that delivery; one whose handling was cut off at
``MAX_RESUMES`` starts is given up with an ERROR. The handler is a stand-in that records what
it is given; the database is real."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mautrix.types import Event, EventType

from appservice.inbox import MAX_RESUMES, EventInbox, InboxRow, InboxStore
from appservice.oncall.store import OncallStore
from carematrix.intake import interest
from carematrix.oncall.escalation import Action, Page
from carematrix.oncall.send_order import send_order
from tests.integration.test_schema_upgrade import Backend, opened

BOT = "@carematrix:h"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path)
    yield b
    b.drop_all()


def message(event_id: str, body: str, room: str = "!dm:h") -> dict[str, Any]:
    return {"type": "m.room.message", "event_id": event_id, "room_id": room, "sender": "@n3002:h",
            "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": body}}


class Told:
    """Stands in for the bot telling a sender their event was not handled."""

    def __init__(self) -> None:
        self.rows: list[str] = []

    async def __call__(self, row: InboxRow) -> None:
        self.rows.append(row.event_id)


def inbox_on(db: Any) -> EventInbox:
    async def everything(_: Any) -> bool:
        return True

    return EventInbox(InboxStore(db), BOT, "h", everything)


async def test_events_not_handled_before_a_crash_are_handled_once_in_order_after_it(
    backend: Backend, caplog: pytest.LogCaptureFixture,
):
    target = backend.new()
    page, ack, chat = message("$page", "Bed 12: chest pain"), message("$ack", "!ack 3F9A1C"), message("$ok", "!ping")
    async with opened(backend, target) as (db, _):
        inbox = inbox_on(db)
        assert await inbox.accept([page, ack]) == 2
        assert await inbox.accept([chat]) == 1
        await inbox.done("$ok")  # handled before the crash
        assert await inbox.accept([page]) == 1  # sent again by the homeserver: one row still
    handled: list[tuple[str, str, str]] = []

    async def handle(event: Event) -> None:
        handled.append((str(event.event_id), str(event.type), event.content.serialize()["body"]))
        assert event.type == EventType.ROOM_MESSAGE and event.type.is_message

    async with opened(backend, target) as (db, _):
        inbox = inbox_on(db)
        backlog = await inbox.store.pending()
        assert [r.event_id for r in backlog] == ["$page", "$ack"]
        assert backlog[0].kind == "message" and backlog[1].kind == "command"
        with caplog.at_level(logging.WARNING):
            assert await inbox.resume(backlog, lambda _: True, handle, Told()) == 2
        assert handled == [("$page", "m.room.message", "Bed 12: chest pain"), ("$ack", "m.room.message", "!ack 3F9A1C")]
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 2 and "$page" in warned[0] and "before the restart" in warned[0] and "$ack" in warned[1]
        assert await inbox.store.pending() == []
        # A later delivery of a handled event is recognised as handled.
        assert await inbox.accept([ack]) == 1
        assert inbox.take("$ack") == "done"
        rows = backend.rows(target)["event_inbox"]
        assert all(dict(r)["event"] == "{}" for r in rows), "a handled event's content is not kept"


async def test_an_event_delivered_again_during_the_start_is_left_to_that_delivery(backend: Backend):
    target = backend.new()
    async with opened(backend, target) as (db, _):
        await inbox_on(db).accept([message("$a", "!ping"), message("$b", "!help")])
    handled: list[str] = []

    async def handle(event: Event) -> None:
        handled.append(str(event.event_id))

    async with opened(backend, target) as (db, _):
        inbox = inbox_on(db)
        backlog = await inbox.store.pending()
        assert await inbox.resume(backlog, lambda event_id: event_id != "$a", handle, Told()) == 1
        assert handled == ["$b"]
        assert [r.event_id for r in await inbox.store.pending()] == ["$a"]  # its delivery marks it done


async def test_an_event_whose_handling_keeps_taking_the_appservice_down_is_given_up(
    backend: Backend, caplog: pytest.LogCaptureFixture,
):
    target = backend.new()
    async with opened(backend, target) as (db, _):
        await inbox_on(db).accept([message("$poison", "!case close"), message("$next", "!ping")])
    handled: list[str] = []

    async def dies(event: Event) -> None:
        if str(event.event_id) == "$poison":
            raise SystemExit("the appservice went down with it")
        handled.append(str(event.event_id))

    told = Told()
    for _ in range(MAX_RESUMES):
        async with opened(backend, target) as (db, _):
            inbox = inbox_on(db)
            with pytest.raises(SystemExit):
                await inbox.resume(await inbox.store.pending(), lambda _: True, dies, told)
    assert told.rows == []
    async with opened(backend, target) as (db, _):
        inbox = inbox_on(db)
        with caplog.at_level(logging.WARNING):
            assert await inbox.resume(await inbox.store.pending(), lambda _: True, dies, told) == 1
        assert handled == ["$next"] and told.rows == ["$poison"]  # its sender is told
        (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert "$poison" in error and f"taken up again at {MAX_RESUMES} starts" in error and "given up" in error
        assert await inbox.store.pending() == []


async def test_an_event_that_cannot_be_read_back_is_an_error_not_a_crash(backend: Backend, caplog: pytest.LogCaptureFixture):
    target = backend.new()
    async with opened(backend, target) as (db, _):
        found = interest(message("$broken", "!ping"), BOT, "h")
        assert found is not None
        # Stored without its room, sender and content (as a release with a bug might have).
        await InboxStore(db).accept([(found, {"type": "m.room.message", "event_id": "$broken"})])

    async def handle(event: Event) -> None:
        raise AssertionError("not handed on")

    async with opened(backend, target) as (db, _):
        inbox = inbox_on(db)
        told = Told()
        with caplog.at_level(logging.ERROR):
            assert await inbox.resume(await inbox.store.pending(), lambda _: True, handle, told) == 0
        assert told.rows == ["$broken"]
        assert any("$broken" in r.getMessage() and "cannot be read back" in r.getMessage() for r in caplog.records)
        assert await inbox.store.pending() == []


async def test_the_outbox_reads_its_waiting_sends_with_their_pages_priority(backend: Backend):
    """Upgrade 6 indexes the unsent sends; their order is the send order: the critical page
    committed last goes first, each page's own sends in the order decided."""
    now = datetime(2026, 12, 4, 14, 0, tzinfo=UTC)

    def page(name: str, priority: str) -> Page:
        return Page(name, "icu/doctor", "@n3001:h", f"!{name}:h", f"${name}", now, 0, now, ("D2001",), None, None,
                    "open", priority)

    async with opened(backend, backend.new()) as (db, _):
        store = OncallStore(db)
        await store.save_page(page("routine", "routine"), [
            ("0001-000", Action("page", ("D2001",), 0, "routine", "page")),
            ("0001-001", Action("tell_sender", (), 0, "routine", "told")),
        ])
        await store.save_page(page("critical", "critical"), [
            ("0002-000", Action("page", ("D2001",), 0, "critical", "page")),
            ("0002-001", Action("tell_sender", (), 0, "urgent", "told")),
        ])
        await store.mark_sent("0001-001")
        assert [(q.key, q.page_priority) for _, q in send_order(await store.unsent())] == [
            ("0002-000", "critical"), ("0002-001", "critical"), ("0001-000", "routine"),
        ]
