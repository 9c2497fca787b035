"""Bringing a paged person into the page's room, as the doctor who asked for the page sees it
when the homeserver refuses or fails: after a refusal the person is paged in a direct chat with
the role and the room is told, once, without retrying the invite; a server error is said once
and the invite retried after a back-off until it works. The homeserver is a stand-in here;
tests/e2e/test_fhir_and_cases.py drives a real one."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from appservice.homeserver import MatrixCallFailed
from appservice.oncall.clock import Clock
from appservice.oncall.service import OncallService
from carematrix.oncall.escalation import Action, Page
from carematrix.oncall.send_order import Queued
from carematrix.policy.holder import PolicyHolder

POLICIES = Path(__file__).resolve().parents[2] / "policies"
ROOM = "!case:localhost"
REQUESTER = "@d1001:localhost"
BOT = "@carematrix:localhost"


class Homeserver:
    """Answers invites with the given failures, in turn, then with success; records notices."""

    def __init__(self, *invite_failures: MatrixCallFailed) -> None:
        self.server = "localhost"
        self.failures = list(invite_failures)
        self.invites: list[str] = []
        self.notices: list[dict[str, Any]] = []

    def uid(self, localpart: str) -> str:
        return f"@{localpart}:{self.server}"

    async def call(self, method: str, path: str, body: Any = None, as_user: str | None = None) -> Any:
        if method == "GET" and "/state/m.room.member/" in path:  # nobody is in the room yet
            raise MatrixCallFailed(method, path, 404, {"errcode": "M_NOT_FOUND", "error": "Event not found."})
        if path.endswith("/createRoom"):
            return {"room_id": "!dm:localhost"}
        if path.endswith("/invite"):
            self.invites.append(body["user_id"])
            if self.failures:
                raise self.failures.pop(0)
            return {}
        self.notices.append({**body, "room": unquote(path.split("/rooms/", 1)[1].split("/", 1)[0])})
        return {"event_id": f"$n{len(self.notices)}"}


class Outbox:
    def __init__(self, page: Page, action: Action) -> None:
        self.page_ = page
        self.items = {"txn-1": action}
        self.sent: set[str] = set()

    async def unsent(self) -> list[Queued[Action]]:
        return [Queued(t, self.page_.page_id, self.page_.priority, a.priority, a)
                for t, a in self.items.items() if t not in self.sent]

    async def page(self, page_id: str) -> Page:
        return self.page_

    async def mark_sent(self, txn_id: str) -> None:
        self.sent.add(txn_id)

    async def add_page_notice(self, *args: Any) -> None:
        pass

    async def role_dm(self, role: str, staff_number: str) -> str | None:
        return None

    async def set_role_dm(self, *args: Any) -> None:
        pass

    async def set_role_room(self, *args: Any) -> None:
        pass


def refused(status: int, errcode: str, error: str) -> MatrixCallFailed:
    return MatrixCallFailed("POST", f"/_matrix/client/v3/rooms/{ROOM}/invite", status, {"errcode": errcode, "error": error})


def service(homeserver: Homeserver) -> tuple[OncallService, Outbox]:
    now = datetime(2026, 12, 4, 14, 0, tzinfo=UTC)
    page = Page("case-1-cardiology/attending", "cardiology/attending", REQUESTER, ROOM, "$summary", now, 0, now,
                ("D1002",), None, None, "open")
    outbox = Outbox(page, Action("page", ("D1002",), 0, "urgent", "Page for cardiology/attending"))
    oncall = OncallService(outbox, PolicyHolder(POLICIES), homeserver, BOT, None, Clock())  # type: ignore[arg-type]
    return oncall, outbox


def said(homeserver: Homeserver) -> list[str]:
    return [n["body"] for n in homeserver.notices if "Could not bring" in n["body"]]


async def test_a_refused_invite_pages_directly_and_tells_the_requester_once(caplog: pytest.LogCaptureFixture):
    homeserver = Homeserver(refused(403, "M_FORBIDDEN", "You don't have permission to invite users"))
    oncall, outbox = service(homeserver)
    with caplog.at_level(logging.WARNING):
        await oncall.flush()
    (told,) = [n for n in homeserver.notices if "cannot join this room" in n["body"]]
    assert told["room"] == ROOM and told["m.mentions"]["user_ids"] == [REQUESTER]
    assert told["body"].startswith("王芳 Wang Fang (D1002) 无法加入此房间，已改为在与 cardiology/attending 的私聊中呼叫。")
    assert "王芳 Wang Fang (D1002) cannot join this room (You don't have permission to invite users)" in told["body"]
    assert any(r.levelno == logging.WARNING and "D1002" in r.getMessage() for r in caplog.records)
    pages = [n for n in homeserver.notices if n.get("org.carematrix.page")]
    assert {n["room"] for n in pages} == {ROOM, "!dm:localhost"}  # in the room and, for her, directly
    assert outbox.sent == {"txn-1"}
    await oncall.flush()
    assert homeserver.invites == ["@d1002:localhost"]  # a refusal is not retried


async def test_a_failing_homeserver_is_said_once_and_the_invite_retried(monkeypatch: pytest.MonkeyPatch):
    homeserver = Homeserver(refused(502, "M_UNKNOWN", "Bad gateway"), refused(503, "M_UNKNOWN", "Unavailable"))
    oncall, outbox = service(homeserver)
    clock = [1000.0]
    monkeypatch.setattr("appservice.oncall.outbox.time.monotonic", lambda: clock[0])
    await oncall.flush()
    assert said(homeserver) == ["暂时无法将 王芳 Wang Fang (D1002) 拉入此房间（cardiology/attending），正在重试。 "
                                "Could not bring 王芳 Wang Fang (D1002) into this room for cardiology/attending "
                                "yet: HTTP 502 M_UNKNOWN: Bad gateway. Trying again."]
    assert outbox.sent == set()
    await oncall.flush()  # the back-off has not passed: nothing is tried
    assert len(homeserver.invites) == 1
    clock[0] += 1
    await oncall.flush()  # fails again: not said again, waits longer
    assert len(homeserver.invites) == 2 and len(said(homeserver)) == 1
    clock[0] += 1
    await oncall.flush()
    assert len(homeserver.invites) == 2
    clock[0] += 1
    await oncall.flush()
    assert len(homeserver.invites) == 3 and outbox.sent == {"txn-1"}
    assert sum(bool(n.get("org.carematrix.page")) for n in homeserver.notices) == 1  # the page, once


async def test_someone_already_in_the_room_is_no_failure():
    homeserver = Homeserver(refused(403, "M_FORBIDDEN", "@d1002:localhost is already in the room."))
    oncall, outbox = service(homeserver)
    await oncall.flush()
    assert said(homeserver) == [] and outbox.sent == {"txn-1"}
