"""Nurse-call devices end to end: a bed button or badge presses over HTTP on the appservice's
port, the unit's on-duty staff are paged in their team room (seen through their own /sync),
repeated presses are one call, and the device reads back who acknowledged it."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

import aiohttp
from nio import AsyncClient, RoomResolveAliasResponse, RoomSendResponse

from tests.oncall_support import notices, set_clock, tomorrow_at
from tests.support import RunningStack, eventually, search

BED = "icu-bed-03"  # in the demo policy, token generated into the deployment's secrets


async def press(stack: RunningStack, device: str, kind: str, token: str | None) -> tuple[int, dict[str, Any]]:
    url = f"{stack.deployment.settings.appservice_url}/_carematrix/devices/{device}/call"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.post(url, json={"kind": kind}, headers=headers) as r:
        return r.status, await r.json()


async def poll(stack: RunningStack, device: str, token: str, call_id: str | None = None) -> tuple[int, dict[str, Any]]:
    base = f"{stack.deployment.settings.appservice_url}/_carematrix/devices/{device}"
    url = f"{base}/calls/{call_id}" if call_id else f"{base}/call"
    async with aiohttp.ClientSession() as http, http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json()


def bed_token(stack: RunningStack) -> str:
    return stack.deployment.secrets[f"device_token:{BED}"]


async def unit_room(client: AsyncClient, stack: RunningStack, unit: str) -> str:
    resolved = await client.room_resolve_alias(f"#{unit}-team:{stack.server_name}")
    assert isinstance(resolved, RoomResolveAliasResponse), resolved
    return resolved.room_id


async def page_for(client: AsyncClient, room: str, user_id: str, alert_id: str) -> dict[str, Any]:
    """The page notice with this alert ID that mentions ``user_id``, as the person sees it."""
    async def found() -> dict[str, Any] | None:
        for n in await notices(client, room):
            c = n["content"]
            if c.get("org.carematrix.page") and c.get("org.carematrix.alert_id") == alert_id \
                    and user_id in c.get("m.mentions", {}).get("user_ids", []):
                return n
        return None

    return await eventually(found)


async def test_a_bed_button_pages_the_units_nurse_and_learns_who_acknowledged(stack: RunningStack):
    await set_clock(stack, tomorrow_at(10, 0))  # N3001 holds ICU nurse in charge 08:00-20:00
    nurse = await stack.login("n3001")
    try:
        status, call = await press(stack, BED, "assist", bed_token(stack))
        assert status == 201, call
        assert call["acknowledged"] is False and call["kind"] == "assist" and call["presses"] == 1
        (page,) = call["pages"]
        assert page["role"] == "icu/nurse" and page["priority"] == "urgent"
        assert call["roster_gap"] is False and call["notices"] == [] and page["roster_gap"] is False
        room = await unit_room(nurse, stack, "icu")
        notice = await page_for(nurse, room, stack.user_id("n3001"), page["alert_id"])
        # At least urgent: the role's escalation step may page at a higher priority.
        assert notice["content"]["org.carematrix.priority"] in ("urgent", "critical")
        said = [n["content"]["body"] for n in await notices(nurse, room) if n["content"].get("org.carematrix.device_call", {}).get("call") == call["call_id"]]
        assert len(said) == 1 and "03" in said[0] and BED in said[0]

        # The patient presses twice more: still one call, one page.
        for presses in (2, 3):
            status, again = await press(stack, BED, "assist", bed_token(stack))
            assert status == 200 and again["call_id"] == call["call_id"] and again["presses"] == presses
        assert len(again["pages"]) == 1

        # The nurse answers the page; the device reads back who.
        replied = await nurse.room_send(room, "m.room.message", {
            "msgtype": "m.text", "body": "On my way",
            "m.relates_to": {"m.in_reply_to": {"event_id": notice["event_id"]}},
        })
        assert isinstance(replied, RoomSendResponse), replied

        async def acknowledged() -> dict[str, Any] | None:
            status, state = await poll(stack, BED, bed_token(stack))
            assert status == 200, state
            return state if state["acknowledged"] else None

        state = await eventually(acknowledged)
        assert state["call_id"] == call["call_id"]
        assert "N3001" in state["acknowledged_by"] and state["acknowledged_at"]
        status, same = await poll(stack, BED, bed_token(stack), call["call_id"])
        assert status == 200 and same["acknowledged_by"] == state["acknowledged_by"]

        # Acknowledged: the next press is a new call.
        status, next_call = await press(stack, BED, "assist", bed_token(stack))
        assert status == 201 and next_call["call_id"] != call["call_id"]

        records = [r for r in search(stack, "--action", "appservice.device.call") if r.get("object") == BED]
        mine = [r for r in records if r.get("details", {}).get("call") == call["call_id"]]
        assert len(mine) == 3 and sorted(r["details"]["repeat"] for r in mine) == [False, True, True]
    finally:
        await nurse.close()


async def test_an_emergency_pages_nurse_doctor_and_the_named_roles_at_critical(stack: RunningStack):
    """Added to the policy by its admin with a hashed token; a press after the window is a new
    call, a press asking for more (code after emergency) is one at once."""
    token = secrets.token_urlsafe(24)
    policy = stack.policy_dir / "devices.yaml"
    original = policy.read_text()
    policy.write_text(original + (
        "    icu-terminal-7:\n"
        "      location: {unit: icu, bed: \"07\"}\n"
        f"      token_sha256: {hashlib.sha256(token.encode()).hexdigest()}\n"
    ))
    doctor = await stack.login("d2001")
    try:
        await set_clock(stack, tomorrow_at(11, 0))

        async def pressed() -> tuple[int, dict[str, Any]] | None:
            status, body = await press(stack, "icu-terminal-7", "emergency", token)
            return (status, body) if status != 404 else None  # until the policy edit is read

        status, call = await eventually(pressed)
        assert status == 201, call
        assert {p["role"]: p["priority"] for p in call["pages"]} == {"icu/nurse": "critical", "icu/doctor": "critical"}
        room = await unit_room(doctor, stack, "icu")
        doctor_page = next(p for p in call["pages"] if p["role"] == "icu/doctor")
        notice = await page_for(doctor, room, stack.user_id("d2001"), doctor_page["alert_id"])
        assert notice["content"]["org.carematrix.priority"] == "critical"

        status, code = await press(stack, "icu-terminal-7", "code", token)
        assert status == 201 and code["call_id"] != call["call_id"]
        assert {p["role"] for p in code["pages"]} == {"icu/nurse", "icu/doctor", "administration/duty-doctor"}

        await set_clock(stack, tomorrow_at(11, 0) + timedelta(minutes=5))
        status, later = await press(stack, "icu-terminal-7", "code", token)
        assert status == 201 and later["call_id"] != code["call_id"]
    finally:
        policy.write_text(original)
        await doctor.close()


async def test_unknown_devices_and_wrong_tokens_are_refused_and_audited(stack: RunningStack):
    status, body = await press(stack, "no-such-device", "assist", "whatever")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await press(stack, BED, "assist", "not-the-token")
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
    status, body = await press(stack, BED, "assist", None)
    assert status == 401
    status, body = await poll(stack, BED, "not-the-token")
    assert status == 401
    status, body = await press(stack, BED, "fire", bed_token(stack))
    assert status == 400 and "assist" in body["error"]

    async def refused() -> list[dict[str, Any]]:
        return [r for r in search(stack, "--action", "appservice.device.call", "--outcome", "failure")
                if r.get("object") == BED]

    assert len(await eventually(refused)) >= 3


async def test_two_presses_at_once_are_one_call(stack: RunningStack):
    """A patient leaning on the button: the second press arrives while the first call's pages
    are still going out, and must not page the nurse twice."""
    import asyncio

    await set_clock(stack, tomorrow_at(9, 0) + timedelta(days=3))  # past every earlier call's window
    token = bed_token(stack)
    (first, a), (second, b) = await asyncio.gather(press(stack, BED, "assist", token), press(stack, BED, "assist", token))
    assert sorted((first, second)) == [200, 201], (a, b)
    assert a["call_id"] == b["call_id"] and max(a["presses"], b["presses"]) == 2, (a, b)


async def test_a_press_that_finds_nobody_on_duty_says_the_fallback_was_paged_and_who(stack: RunningStack):
    """The ICU roster has day shifts only: at night a bed's call finds nobody on duty as ICU
    nurse and the role's fallback (the ICU senior pool: D2001) is paged. The device's answer,
    its poll and the record say so — not just "paged"."""
    await set_clock(stack, tomorrow_at(23, 0) + timedelta(days=9))  # clear of earlier calls' windows
    doctor = await stack.login("d2001")
    try:
        status, call = await press(stack, BED, "assist", bed_token(stack))
        assert status == 201, call
        (page,) = call["pages"]
        assert page["role"] == "icu/nurse" and page["roster_gap"] is True
        assert page["fallback"] == "pool:icu-senior"
        assert page["fallback_paged"] == ["陈静 Chen Jing (D2001)"] == page["paged"]
        assert call["roster_gap"] is True
        (notice,) = call["notices"]
        assert "排班空缺" in notice and "Roster gap" in notice and notice.index("排班空缺") < notice.index("Roster gap")
        assert "陈静 Chen Jing (D2001)" in notice and "fallback" in notice
        # The device polling later is told the same; the fallback doctor really has the page.
        status, polled = await poll(stack, BED, bed_token(stack), call["call_id"])
        assert status == 200 and polled["notices"] == call["notices"] and polled["pages"][0]["fallback_paged"] == page["fallback_paged"]
        room = await unit_room(doctor, stack, "icu")
        await page_for(doctor, room, stack.user_id("d2001"), page["alert_id"])

        records = await eventually(lambda: [
            r for r in search(stack, "--action", "appservice.device.call")
            if r.get("details", {}).get("call") == call["call_id"]
        ])
        (record,) = records
        assert record["rule"] == "oncall.fallback"
        details = record["details"]
        assert details["roster_gap_roles"] == ["icu/nurse"] and details["fallback_paged"] == ["D2001"]
        assert details["roster_gaps"] == ["icu/nurse step 1: fallback pool:icu-senior paged D2001"]
    finally:
        await doctor.close()
