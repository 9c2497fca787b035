"""Alerts that ring the phone, end to end: a phone's pusher (registered by a real client
against the homeserver) and a push gateway on loopback that implements the Matrix Push Gateway
API, reached only because the deployment opens its address to Synapse. Off duty, quiet hours
silence a routine message and let a critical page through with high priority and the critical
sound; no notification carries message content."""

from __future__ import annotations

import json
import secrets
from typing import Any

import aiohttp
from nio import AsyncClient, RoomResolveAliasResponse, RoomSendResponse

from tests.e2e.test_devices import BED, bed_token, press
from tests.e2e.test_oncall import bot_dm, command
from tests.e2e.test_protection import new_room
from tests.oncall_support import quiet_rule_in_place, set_clock, tomorrow_at
from tests.push_gateway import PushGateway
from tests.support import RunningStack, eventually


async def register_pusher(stack: RunningStack, client: AsyncClient, gateway: PushGateway, fmt: str | None) -> str:
    """What Element on a phone does after sign-in: an HTTP pusher at the hospital's gateway."""
    pushkey = secrets.token_hex(16)
    data: dict[str, Any] = {"url": gateway.url}
    if fmt:
        data["format"] = fmt
    body = {
        "kind": "http", "app_id": "org.carematrix.test.android", "pushkey": pushkey,
        "app_display_name": "CareMatrix", "device_display_name": "ward phone", "lang": "zh-CN", "data": data,
    }
    async with aiohttp.ClientSession() as http, http.post(
        stack.url + "/_matrix/client/v3/pushers/set", json=body,
        headers={"Authorization": f"Bearer {client.access_token}"},
    ) as r:
        assert r.status == 200, await r.text()
    return pushkey


def rang(notification: dict[str, Any]) -> bool:
    tweaks = notification["devices"][0].get("tweaks", {})
    return notification.get("prio") == "high" and tweaks.get("sound") == "critical"


async def test_off_duty_a_critical_page_rings_the_phone_and_a_routine_message_does_not(
    stack: RunningStack, push_gateway: PushGateway,
):
    await set_clock(stack, tomorrow_at(22, 0))  # D2001 is off duty (ICU days are 08:00-20:00)
    doctor = await stack.login("d2001")
    nurse = await stack.login("n3001")
    try:
        assert await eventually(lambda: quiet_rule_in_place(stack, doctor))
        phone = await register_pusher(stack, doctor, push_gateway, None)
        ids_only = await register_pusher(stack, doctor, push_gateway, "event_id_only")
        resolved = await nurse.room_resolve_alias(f"#icu-team:{stack.server_name}")
        assert isinstance(resolved, RoomResolveAliasResponse), resolved
        room = resolved.room_id

        routine = await nurse.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "床3 明早换药 dressing change tomorrow"})
        assert isinstance(routine, RoomSendResponse), routine

        # An emergency at bed 3: nobody holds the ICU roles at night, the fallback (D2001) is paged.
        status, call = await press(stack, BED, "emergency", bed_token(stack))
        assert status == 201, call

        async def critical_push() -> dict[str, Any] | None:
            return next((n for n in push_gateway.received(phone) if n["room_id"] == room and rang(n)), None)

        pushed = await eventually(critical_push)
        assert pushed["type"] == "m.room.message" and "content" not in pushed  # who and where, no text
        # Pushes to one phone leave in the order of the events: the routine message, sent
        # first, would have been pushed before the page.
        assert routine.event_id not in {n.get("event_id") for n in push_gateway.received(phone)}

        # A phone registered for event IDs only (Element's default) gets the page as IDs and a
        # priority, nothing else.
        async def bare() -> dict[str, Any] | None:
            return next((n for n in push_gateway.received(ids_only) if n.get("event_id") == pushed["event_id"]), None)

        minimal = await eventually(bare)
        assert minimal["prio"] == "high"
        assert set(minimal) <= {"event_id", "room_id", "prio", "counts", "devices"}

        # A call placed to them (!call) rings through quiet hours too.
        chat = await bot_dm(stack, nurse)
        await command(nurse, chat, "!call D2001", "Calling")

        async def call_push() -> dict[str, Any] | None:
            return next((n for n in push_gateway.received(phone)
                         if n["room_id"] != room and rang(n) and n.get("sender") == stack.bot_user_id), None)

        assert await eventually(call_push)
        assert all("content" not in n for n in push_gateway.received(phone))
    finally:
        await doctor.close()
        await nurse.close()


async def test_a_push_from_a_protected_room_carries_no_text_no_names_whatever_the_pushers_format(
    stack: RunningStack, push_gateway: PushGateway,
):
    """A phone's pusher registered WITHOUT event_id_only (Synapse's full format: the sender's
    display name and the room's name) still gets neither from a confidential room named after
    its patient, nor the message's words: the homeserver leaves them out itself."""
    director = await stack.login("a0001")  # works no shifts: no quiet hours silence him
    nurse = await stack.login("n3001")
    try:
        phone = await register_pusher(stack, director, push_gateway, None)
        room = await new_room(nurse, [director], name="王建国 3床 会诊 Wang Jianguo bed 3", initial_state=[
            {"type": "org.carematrix.room_class", "state_key": "", "content": {"class": "confidential"}},
        ])
        sent = await nurse.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "患者王建国血钾7.2，请看化验 K+ 7.2"})
        assert isinstance(sent, RoomSendResponse), sent

        async def pushed() -> dict[str, Any] | None:
            return next((n for n in push_gateway.received(phone) if n.get("event_id") == sent.event_id), None)

        notification = await eventually(pushed)
        # What the phone needs to fetch the message with its own token, and that it is one.
        assert notification["room_id"] == room and notification["type"] == "m.room.message"
        assert notification["sender"] == stack.user_id("n3001") and notification["counts"]["unread"] >= 1
        for notified in [n for n in push_gateway.received(phone) if n.get("room_id") == room]:  # the invitation too
            assert not {"content", "sender_display_name", "room_name"} & set(notified), notified
            text = json.dumps(notified, ensure_ascii=False)
            for word in ("王建国", "Wang Jianguo", "血钾", "K+", "刘洋", "Liu Yang", "周明"):
                assert word not in text, (word, notified)
    finally:
        await director.close()
        await nurse.close()
