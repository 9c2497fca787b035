"""The page outbox sends the most urgent page first: after an outage or under a backlog a
critical result's page goes before routine pages queued earlier, and a page's own sends keep
the order they were decided in. The homeserver and the database are stand-ins here;
tests/e2e/test_clinical_safety.py watches the order on a real homeserver."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest

from appservice.homeserver import HomeserverUnreachable, MatrixCallFailed
from appservice.oncall.clock import Clock
from appservice.oncall.service import OncallService
from carematrix.oncall.escalation import Action, Page
from carematrix.oncall.send_order import Queued, send_order
from carematrix.policy.holder import PolicyHolder

POLICIES = Path(__file__).resolve().parents[2] / "policies"
BOT = "@carematrix:localhost"
NOW = datetime(2026, 12, 4, 14, 0, tzinfo=UTC)


def q(key: str, page: str, page_priority: str, priority: str | None = None) -> Queued[str]:
    return Queued(key, page, page_priority, priority or page_priority, f"{page}:{key}")


def test_critical_pages_go_first_and_each_page_keeps_its_own_order():
    waiting = [
        q("001", "routine-a", "routine"), q("002", "routine-a", "routine"),
        q("003", "urgent-b", "urgent"),
        q("004", "critical-c", "critical"), q("005", "routine-d", "routine"),
        q("006", "critical-c", "critical", "urgent"),  # the acknowledgement notice of the critical page
    ]
    assert [x.item for _, x in send_order(waiting)] == [
        "critical-c:004", "critical-c:006", "urgent-b:003", "routine-a:001", "routine-a:002", "routine-d:005",
    ]
    assert [r for r, _ in send_order(waiting)] == [2, 2, 1, 0, 0, 0]


def test_a_page_whose_escalation_step_is_critical_is_sent_as_critical_with_its_earlier_sends():
    waiting = [
        q("001", "routine-a", "routine"),
        q("002", "urgent-b", "urgent"),  # its first step, not sent yet (an outage)
        q("003", "urgent-b", "urgent", "critical"),  # its next step, which the policy marks critical
    ]
    assert [x.key for _, x in send_order(waiting)] == ["002", "003", "001"]


def test_an_unknown_priority_counts_as_urgent():
    assert [x.key for _, x in send_order([q("001", "a", "routine"), q("002", "b", "loud")])] == ["002", "001"]


# -- the outbox on a stand-in homeserver ---------------------------------------------------


class Store:
    """The on-call store's outbox, pages and the records a send writes."""

    def __init__(self) -> None:
        self.pages: dict[str, Page] = {}
        self.outbox: list[tuple[str, str, Action]] = []
        self.sent: set[str] = set()

    async def save_page(self, page: Page, actions: list[tuple[str, Action]]) -> None:
        self.pages[page.page_id] = page
        self.outbox += [(txn, page.page_id, a) for txn, a in actions]

    async def unsent(self) -> list[Queued[Action]]:
        return [Queued(t, p, self.pages[p].priority, a.priority, a) for t, p, a in sorted(self.outbox)
                if t not in self.sent]

    async def page(self, page_id: str) -> Page | None:
        return self.pages.get(page_id)

    async def mark_sent(self, txn_id: str) -> None:
        self.sent.add(txn_id)

    async def add_page_notice(self, *args: Any) -> None:
        pass


class Homeserver:
    """Everyone is in every room already; page notices are recorded by the page's room. Each
    call first runs ``before`` (a test's way to commit a page or fail mid-flush)."""

    server = "localhost"

    def __init__(self) -> None:
        self.pages: list[str] = []
        self.before: Callable[[str], Any] | None = None

    def uid(self, localpart: str) -> str:
        return f"@{localpart}:{self.server}"

    async def call(self, method: str, path: str, body: Any = None, as_user: str | None = None) -> Any:
        room = unquote(path.split("/rooms/", 1)[1].split("/", 1)[0]) if "/rooms/" in path else ""
        if self.before is not None:
            await self.before(room)
        if method == "GET" and "/state/m.room.member/" in path:
            return {"membership": "join"}
        if body and body.get("org.carematrix.page"):
            self.pages.append(room)
        return {"event_id": f"$n{len(self.pages)}"}


def page(name: str, priority: str) -> Page:
    return Page(name, "cardiology/attending", "@n3002:localhost", f"!{name}:localhost", f"${name}", NOW, 0, NOW,
                ("D1002",), None, None, "open", priority)


def service() -> tuple[OncallService, Store, Homeserver]:
    store, homeserver = Store(), Homeserver()
    oncall = OncallService(store, PolicyHolder(POLICIES), homeserver, BOT, None, Clock())  # type: ignore[arg-type]
    return oncall, store, homeserver


async def commit(oncall: OncallService, name: str, priority: str) -> None:
    await oncall.outbox.commit(page(name, priority), [Action("page", ("D1002",), 0, priority, f"Page {name}")])


async def test_a_critical_page_committed_behind_a_backlog_of_routine_pages_is_sent_first():
    oncall, _, homeserver = service()
    for i in range(3):
        await commit(oncall, f"routine{i}", "routine")
    await commit(oncall, "critical", "critical")
    await oncall.flush()
    assert homeserver.pages == ["!critical:localhost", "!routine0:localhost", "!routine1:localhost",
                                "!routine2:localhost"]


async def test_a_critical_page_committed_while_routine_ones_are_being_sent_goes_next():
    oncall, _, homeserver = service()
    for i in range(3):
        await commit(oncall, f"routine{i}", "routine")

    async def critical_result_arrives(room: str) -> None:
        if room == "!routine0:localhost" and homeserver.before is not None:
            homeserver.before = None
            await commit(oncall, "critical", "critical")

    homeserver.before = critical_result_arrives
    await oncall.flush()
    assert homeserver.pages == ["!routine0:localhost", "!critical:localhost", "!routine1:localhost",
                                "!routine2:localhost"]


@pytest.mark.parametrize("away", [
    HomeserverUnreachable("PUT", "/send", aiohttp.ClientConnectionError("Connection refused")),
    MatrixCallFailed("PUT", "/send", 502, "Bad Gateway"),
])
async def test_after_an_outage_the_most_urgent_page_goes_first(monkeypatch: pytest.MonkeyPatch, away: Exception):
    """The homeserver goes away while routine pages are being sent: the outbox stops trying
    (one failed send, not one per page) and, when the homeserver is back, sends the critical
    page committed meanwhile before the routine ones queued before it."""
    clock = [1000.0]
    monkeypatch.setattr("appservice.oncall.outbox.time.monotonic", lambda: clock[0])
    oncall, store, homeserver = service()
    for i in range(3):
        await commit(oncall, f"routine{i}", "routine")
    tried: list[str] = []

    async def down(room: str) -> None:
        tried.append(room)
        raise away

    homeserver.before = down
    await oncall.flush()
    assert set(tried) == {"!routine0:localhost"} and homeserver.pages == []
    attempts = len(tried)
    await commit(oncall, "critical", "critical")
    await oncall.flush()  # still waiting out the back-off: nothing is tried
    assert len(tried) == attempts
    homeserver.before = None
    clock[0] += 60
    await oncall.flush()
    assert homeserver.pages == ["!critical:localhost", "!routine0:localhost", "!routine1:localhost",
                                "!routine2:localhost"]
    assert store.sent == {t for t, _, _ in store.outbox}
