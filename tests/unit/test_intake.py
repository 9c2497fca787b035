"""What the appservice must not lose is written down before the homeserver's transaction is
answered: the middleware in front of mautrix's transaction endpoint (appservice.intake) hands
the transaction's events to each taker that may want them — voice messages to the voice queue,
pages, acknowledgements and commands to the event inbox — and refuses the transaction (503,
so the homeserver sends it again) when one could not write them. The event inbox picks
precisely what the service acts on (carematrix.intake plus the on-call service's records); the
sender of an event it had to give up on is told."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appservice.homeserver import MatrixCallFailed
from appservice.inbox import DONE, PENDING, EventInbox, InboxRow
from appservice.intake import Intake
from appservice.main import Bot
from appservice.oncall.context import OncallContext
from carematrix.intake import COMMAND, INVITE, MESSAGE, REACTION, Interest, addresses_role, interest

BOT = "@carematrix:h"
ROLE = "@role-cardiology-attending:h"


def event(kind: str, content: dict[str, Any], event_id: str = "$e", sender: str = "@n3002:h", **extra: Any) -> dict:
    return {"type": kind, "event_id": event_id, "room_id": "!r:h", "sender": sender, "content": content, **extra}


VOICE = event("m.room.message", {"msgtype": "m.audio", "url": "mxc://h/a", "org.matrix.msc3245.voice": {}}, "$v")
TEXT = event("m.room.message", {"msgtype": "m.text", "body": "hi"}, "$t")
ACK = event("m.room.message", {"msgtype": "m.text", "body": "!ack 3F9A1C"}, "$ack")


class Taker:
    def __init__(self, what: str, needle: bytes, fails: bool = False) -> None:
        self.what = what
        self.needles = (needle,)
        self.fails = fails
        self.accepted: list[list[dict[str, Any]]] = []

    async def accept(self, events: list[dict[str, Any]]) -> int:
        if self.fails:
            raise RuntimeError("database is locked")
        self.accepted.append(events)
        return len(events)


async def transaction(takers: list[Any], events: list[dict[str, Any]], token: str = "hs") -> tuple[int, list[str]]:
    """PUT one transaction through the middleware; the status and what mautrix saw, in order."""
    intake = Intake("hs")
    intake.takers += takers
    seen: list[str] = []

    async def mautrix(request: web.Request) -> web.Response:
        body = await request.json()  # mautrix reads the body again
        written = sum(len(t.accepted) for t in takers)
        seen.append(f"answered {written} written, {len(body['events'])} events")
        return web.json_response({})

    app = web.Application(middlewares=[intake.middleware])
    app.router.add_put("/_matrix/app/v1/transactions/{txn}", mautrix)
    async with TestClient(TestServer(app)) as client:
        resp = await client.put(
            "/_matrix/app/v1/transactions/1", data=json.dumps({"events": events}),
            headers={"Authorization": f"Bearer {token}"},
        )
        return resp.status, seen


async def test_each_taker_writes_its_events_before_the_transaction_is_answered():
    voice, inbox = Taker("voice messages", b'"m.audio"'), Taker("pages", b'"m.room.message"')
    status, seen = await transaction([voice, inbox], [TEXT, VOICE])
    assert status == 200
    assert voice.accepted == [[TEXT, VOICE]] and inbox.accepted == [[TEXT, VOICE]]
    assert seen == ["answered 2 written, 2 events"]


async def test_a_transaction_one_taker_could_not_write_is_refused_to_come_again():
    voice, inbox = Taker("voice messages", b'"m.audio"'), Taker("pages", b'"m.room.message"', fails=True)
    status, seen = await transaction([voice, inbox], [VOICE])
    assert status == 503
    assert seen == []  # mautrix never saw it: nothing was answered, the homeserver sends it again


async def test_transactions_without_a_takers_needle_and_callers_without_the_homeservers_token_are_passed_on():
    voice = Taker("voice messages", b'"m.audio"', fails=True)
    assert await transaction([voice], [TEXT]) == (200, ["answered 0 written, 1 events"])
    assert await transaction([voice], [VOICE], token="wrong") == (200, ["answered 0 written, 1 events"])


# -- what the event inbox writes down --------------------------------------------------------


def test_what_a_handler_may_act_on_is_told_from_the_event():
    assert interest(ACK, BOT, "h") == Interest(COMMAND, "$ack", "!r:h", "@n3002:h", content=ACK["content"])
    invite = event("m.room.member", {"membership": "invite", "is_direct": True}, state_key=ROLE)
    assert interest(invite, BOT, "h").kind == INVITE  # type: ignore[union-attr]
    assert interest(event("m.room.member", {"membership": "invite"}, state_key=BOT), BOT, "h").kind == INVITE  # type: ignore[union-attr]
    assert interest(event("m.room.member", {"membership": "invite"}, state_key="@d1001:h"), BOT, "h") is None
    assert interest(event("m.room.member", {"membership": "join"}, state_key=ROLE), BOT, "h") is None
    reply = event("m.room.message", {"body": "on my way", "m.relates_to": {"m.in_reply_to": {"event_id": "$page"}}})
    assert interest(reply, BOT, "h") == Interest(MESSAGE, "$e", "!r:h", "@n3002:h", "$page", reply["content"])
    reaction = event("m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$page", "key": "👍"}})
    assert interest(reaction, BOT, "h").target == "$page"  # type: ignore[union-attr]
    assert interest(reaction, BOT, "h").kind == REACTION  # type: ignore[union-attr]
    # The service's own accounts, other servers, other event types and state: nothing.
    assert interest({**ACK, "sender": ROLE}, BOT, "h") is None
    assert interest({**ACK, "sender": BOT}, BOT, "h") is None
    assert interest({**ACK, "sender": "@n1:elsewhere"}, BOT, "h") is None
    assert interest(event("m.room.topic", {"topic": "!ack"}, state_key=""), BOT, "h") is None
    assert interest(event("m.reaction", {}), BOT, "h") is None
    assert interest("not an event", BOT, "h") is None


def test_a_message_pages_a_role_in_a_direct_chat_and_in_a_group_room_when_it_names_it():
    name = "心内科 · 主班医生 (值班) Cardiology – attending on duty"
    assert addresses_role({"body": "Bed 12: chest pain"}, True, ROLE, name)
    assert not addresses_role({"body": "Bed 12: chest pain"}, False, ROLE, name)
    assert addresses_role({"body": "Bed 12", "m.mentions": {"user_ids": [ROLE]}}, False, ROLE, name)
    assert addresses_role({"body": f"{name}: Bed 12"}, False, ROLE, name)
    assert not addresses_role({"body": "Bed 12", "m.mentions": "broken"}, False, ROLE, name)


class Store:
    def __init__(self, done: set[str] | None = None) -> None:
        self.rows: list[str] = []
        self.done = done or set()

    async def accept(self, events: list[tuple[Interest, dict[str, Any]]]) -> dict[str, bool]:
        self.rows += [i.event_id for i, _ in events]
        return {i.event_id: i.event_id in self.done for i, _ in events}


async def test_the_inbox_writes_commands_invites_and_what_the_oncall_service_acts_on_and_nothing_else():
    asked: list[str] = []

    async def acts_on(found: Interest) -> bool:
        asked.append(found.event_id)
        return found.event_id == "$page"

    store = Store(done={"$ack"})
    inbox = EventInbox(store, BOT, "h", acts_on)  # type: ignore[arg-type]
    page = event("m.room.message", {"msgtype": "m.text", "body": "Bed 12: chest pain"}, "$page")
    invite = event("m.room.member", {"membership": "invite"}, "$invite", state_key=ROLE)
    chat = event("m.room.message", {"msgtype": "m.text", "body": "lunch?"}, "$chat")
    notice = event("m.room.message", {"msgtype": "m.notice", "body": "!ack X"}, "$notice", sender=ROLE)
    assert await inbox.accept([chat, page, ACK, invite, notice]) == 3
    assert store.rows == ["$page", "$ack", "$invite"]  # in the order they came
    assert asked == ["$chat", "$page"]  # commands and invites need no records
    # Each handler takes its event once: pending, or done before (a redelivery); others: None.
    assert inbox.take("$page") == PENDING and inbox.take("$ack") == DONE
    assert inbox.take("$page") is None and inbox.take("$chat") is None and inbox.take(None) is None


# -- an event the inbox gave up on is never silent -------------------------------------------


class Homeserver:
    server = "h"

    def __init__(self, fails: bool = False) -> None:
        self.fails = fails
        self.sent: list[tuple[str, str | None, dict[str, Any]]] = []

    def uid(self, localpart: str) -> str:
        return f"@{localpart}:h"

    async def call(self, method: str, path: str, body: Any = None, as_user: str | None = None) -> Any:
        if self.fails:
            raise MatrixCallFailed(method, path, 403, {"errcode": "M_FORBIDDEN", "error": "not in room"})
        self.sent.append((path, as_user, body))
        return {"event_id": "$told"}


class RoleRooms:
    async def role_rooms(self, room_id: str) -> list[tuple[str, bool]]:
        return [("cardiology/attending", True)] if room_id == "!dm:h" else []


def bot_with(homeserver: Homeserver) -> Bot:
    config = SimpleNamespace(hs_token="hs", as_token="as")
    appserv = SimpleNamespace(bot_mxid=BOT, ready=True)
    policy = SimpleNamespace(current=SimpleNamespace(digest="d" * 64))
    oncall = SimpleNamespace(store=RoleRooms(), ctx=OncallContext(
        RoleRooms(), SimpleNamespace(), homeserver, BOT, SimpleNamespace(), SimpleNamespace(),  # type: ignore[arg-type]
    ))
    return Bot(config, appserv, policy, SimpleNamespace(), oncall)  # type: ignore[arg-type]


def row(room: str) -> InboxRow:
    return InboxRow("$page", room, "@n3002:h", "message", {}, 0, 4)


async def test_the_sender_of_an_event_given_up_is_told_to_phone_by_whoever_the_room_talks_to():
    homeserver = Homeserver()
    await bot_with(homeserver).not_handled(row("!dm:h"))
    await bot_with(homeserver).not_handled(row("!ward:h"))
    (in_dm, by_role, told), (in_ward, by_bot, _) = homeserver.sent
    assert in_dm.startswith("/_matrix/client/v3/rooms/%21dm%3Ah/send/m.room.message/not-handled-")
    assert by_role == ROLE and in_ward.startswith("/_matrix/client/v3/rooms/%21ward%3Ah/") and by_bot is None
    assert told["m.mentions"] == {"user_ids": ["@n3002:h"]} and told["org.carematrix.priority"] == "urgent"
    body = told["body"]
    assert "请直接打电话" in body and "phone instead" in body and body.index("打电话") < body.index("phone")


async def test_a_sender_who_cannot_be_told_is_a_warning(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING):
        await bot_with(Homeserver(fails=True)).not_handled(row("!ward:h"))
    assert any("could not tell @n3002:h" in r.getMessage() and "$page" in r.getMessage() for r in caplog.records)


def test_a_command_in_a_roles_direct_chat_pages_nobody():
    role = "@role-icu-doctor:x"
    assert addresses_role({"body": "12床血钾6.8"}, True, role, "ICU doctor")
    for command in ("!ack 3F9A1C", "！oncall", "!oncall icu"):
        assert not addresses_role({"body": command}, True, role, "ICU doctor"), command
    assert addresses_role({"body": "！！12床"}, True, role, "ICU doctor")  # chat, not a command
