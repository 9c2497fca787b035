"""On-duty role addressing end to end: a real Synapse and appservice, the demo hospital's
roster feeds (iCalendar and CSV), and the appservice clock moved by the test (the
``test_clock`` switch) so 07:59 and 08:01 happen within a test run."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import aiohttp
import pytest
from nio import AsyncClient, RoomCreateResponse, RoomSendResponse

from tests.oncall_support import (
    members,
    notices,
    paged_in,
    quiet_rule_in_place,
    set_clock,
    tomorrow_at,
)
from tests.support import RunningStack, eventually, search

# Also run on the worker deployment (tests/conftest.py).
pytestmark = pytest.mark.worker_pass

ATTENDING = "role-cardiology-attending"
# How long to wait for a page or an escalation after moving the clock: the move also makes
# due every open page that tests before left on the shared stack, and the service sends those
# first (see the escalation test). A wait, not a limit on speed: a page that never comes
# still fails. 30 s for the first page was too short once on a loaded CI machine.
BACKLOG_SECONDS = 120.0
ICU = "role-icu-doctor"


async def dm_role(stack: RunningStack, client: AsyncClient, role_localpart: str) -> str:
    role = stack.user_id(role_localpart)
    created = await client.room_create(invite=[role], is_direct=True)
    assert isinstance(created, RoomCreateResponse), created

    async def joined() -> bool:
        return (await members(client, created.room_id)).get(role) == "join"

    assert await eventually(joined)
    return created.room_id


async def page(stack: RunningStack, nurse: AsyncClient, role_localpart: str, at: datetime, text: str) -> str:
    await set_clock(stack, at)
    room = await dm_role(stack, nurse, role_localpart)
    sent = await nurse.room_send(room, "m.room.message", {"msgtype": "m.text", "body": text})
    assert isinstance(sent, RoomSendResponse), sent
    return room


async def bot_dm(stack: RunningStack, client: AsyncClient) -> str:
    """A direct chat with the CareMatrix bot, once it has joined."""
    created = await client.room_create(invite=[stack.bot_user_id], is_direct=True)
    assert isinstance(created, RoomCreateResponse), created
    assert await eventually(lambda: _joined(client, created.room_id, stack.bot_user_id))
    return created.room_id


async def command(client: AsyncClient, room: str, text: str, reply_has: str) -> str:
    """Send a command and wait for the bot's newest reply that contains ``reply_has``."""
    sent = await client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": text})
    assert isinstance(sent, RoomSendResponse), sent

    async def replied() -> str | None:
        for n in reversed(await notices(client, room)):
            if reply_has in n["content"]["body"]:
                return n["content"]["body"]
        return None

    return await eventually(replied)


async def test_role_account_is_found_by_name_in_the_user_directory(stack: RunningStack):
    nurse = await stack.login("n3002")
    try:
        async def found() -> bool:
            async with aiohttp.ClientSession() as http, http.post(
                stack.url + "/_matrix/client/v3/user_directory/search",
                json={"search_term": "attending on duty"},
                headers={"Authorization": f"Bearer {nurse.access_token}"},
            ) as r:
                body = await r.json()
            return any(u["user_id"] == stack.user_id(ATTENDING) for u in body.get("results", []))

        assert await eventually(found, timeout=60, interval=1)
    finally:
        await nurse.close()


async def test_page_at_0759_reaches_the_night_doctor_and_at_0801_the_day_doctor(stack: RunningStack):
    nurse = await stack.login("n3002")
    try:
        # Each page is routed at the moment the service handles it, so the clock moves on
        # only once the first page is out.
        night = await page(stack, nurse, ATTENDING, tomorrow_at(7, 59), "Bed 12: chest pain, ST elevation?")
        assert await eventually(lambda: _paged_is(nurse, night, {stack.user_id("d1002")}), timeout=BACKLOG_SECONDS)
        day = await page(stack, nurse, ATTENDING, tomorrow_at(8, 1), "Bed 14: new AF, rate 150")
        assert await eventually(lambda: _paged_is(nurse, day, {stack.user_id("d1001")}), timeout=BACKLOG_SECONDS)
        assert (await members(nurse, night)).get(stack.user_id("d1002")) in ("invite", "join")
        told = " ".join(n["content"]["body"] for n in await notices(nurse, night))
        assert "王芳 Wang Fang (D1002)" in told

        # 08:00 was a shift change: the night conversation gets the day doctor, with its
        # history, and a notice of who took over from whom.
        async def handed_over() -> bool:
            bodies = [n["content"]["body"] for n in await notices(nurse, night)]
            return any(b.startswith("交接班：李伟 Li Wei (D1001)") and "Shift change: 李伟 Li Wei (D1001)" in b and "王芳 Wang Fang (D1002)" in b for b in bodies)

        assert await eventually(handed_over)
        assert (await members(nurse, night)).get(stack.user_id("d1001")) in ("invite", "join")
    finally:
        await nurse.close()


async def test_unacknowledged_page_escalates_two_steps_and_stops_on_a_reaction(stack: RunningStack):
    nurse = await stack.login("n3002")
    chief = await stack.login("d1001")
    try:
        start = tomorrow_at(2, 0)
        room = await page(stack, nurse, ATTENDING, start, "Bed 3: BP 70/40, not responding to fluids")
        assert await eventually(lambda: _paged_is(nurse, room, {stack.user_id("d1002")}), timeout=BACKLOG_SECONDS)
        # Nobody answers for five minutes: the backup (the chief, at night) is paged.
        await set_clock(stack, start + timedelta(minutes=5, seconds=5))
        # Moving the clock also makes every open page earlier tests left on the shared stack
        # due; the service sends their escalations in order first, so this may take a while.
        assert await eventually(lambda: _paged_is(nurse, room, {stack.user_id("d1002"), stack.user_id("d1001")}),
                                timeout=BACKLOG_SECONDS)
        joined = await chief.join(room)
        assert joined.__class__.__name__ == "JoinResponse", joined
        notice = next(n for n in reversed(await notices(chief, room)) if stack.user_id("d1001") in n["content"].get("m.mentions", {}).get("user_ids", []))
        reacted = await chief.room_send(room, "m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": notice["event_id"], "key": "👍"}})
        assert isinstance(reacted, RoomSendResponse), reacted

        async def acknowledged() -> bool:
            return any("acknowledged" in n["content"]["body"] and "李伟" in n["content"]["body"] for n in await notices(nurse, room))

        assert await eventually(acknowledged, timeout=BACKLOG_SECONDS)  # its notice queues behind that backlog too
        # Well past the next deadline: the chain has stopped, nobody else is paged.
        before = len(await notices(nurse, room))
        await set_clock(stack, start + timedelta(minutes=30))
        await asyncio.sleep(2)
        after = await notices(nurse, room)
        assert not any(n["content"].get("org.carematrix.page") for n in after[before:])
    finally:
        await nurse.close()
        await chief.close()


async def test_an_unchanged_recurring_roster_still_routes_after_weeks_of_uptime(stack: RunningStack):
    """The roster file is not edited for six weeks: its daily shifts must still be in force
    (a recurring feed is expanded for a window around the clock, which has to move with it),
    and moving back again finds tonight's doctor, not a roster gap."""
    nurse = await stack.login("n3002")
    try:
        later = tomorrow_at(22, 0) + timedelta(days=42)
        room = await page(stack, nurse, ATTENDING, later, "Bed 5: 血钾 6.8 K+ 6.8")
        # The night attending, not the fallback pool (the chief) that a roster gap pages.
        assert await eventually(lambda: _paged_is(nurse, room, {stack.user_id("d1002")}), timeout=BACKLOG_SECONDS)
        back = await page(stack, nurse, ATTENDING, tomorrow_at(9, 0), "Bed 6: 心悸 palpitations")
        assert await eventually(lambda: _paged_is(nurse, back, {stack.user_id("d1001")}), timeout=BACKLOG_SECONDS)
        told = " ".join([n["content"]["body"] for r in (room, back) for n in await notices(nurse, r)])
        assert "Nobody is on duty" not in told
    finally:
        await nurse.close()


async def _paged_is(client: AsyncClient, room: str, who: set[str]) -> bool:
    return (await paged_in(client, room)) == who


async def test_roster_gap_pages_the_fallback_and_tells_the_sender(stack: RunningStack):
    nurse = await stack.login("n3001")
    try:
        # The ICU roster has day shifts only: at 03:00 nobody holds the role.
        room = await page(stack, nurse, ICU, tomorrow_at(3, 0), "Bed 2: SpO2 82% on 60% O2")
        assert await eventually(lambda: _paged_is(nurse, room, {stack.user_id("d2001")}), timeout=BACKLOG_SECONDS)

        async def told() -> bool:
            # The sender is told after the fallback is paged: a separate notice.
            return "Nobody is on duty" in " ".join(n["content"]["body"] for n in await notices(nurse, room))

        assert await eventually(told)
    finally:
        await nurse.close()


async def test_restart_mid_escalation_resumes_without_repeating(stack: RunningStack):
    nurse = await stack.login("n3002")
    try:
        start = tomorrow_at(22, 0)
        room = await page(stack, nurse, ATTENDING, start, "Bed 9: K+ 6.9")
        assert await eventually(lambda: _paged_is(nurse, room, {stack.user_id("d1002")}), timeout=BACKLOG_SECONDS)
        stack.stack.appservice.kill()
        stack.stack.restart_appservice()
        # The restarted appservice has the real clock again; move it past the deadline.
        await set_clock(stack, start + timedelta(minutes=5, seconds=5))
        assert await eventually(lambda: _paged_is(nurse, room, {stack.user_id("d1002"), stack.user_id("d1001")}),
                                timeout=BACKLOG_SECONDS)
        await asyncio.sleep(2)
        pages = [n for n in await notices(nurse, room) if n["content"].get("org.carematrix.page")]
        assert len(pages) == 2, [p["content"]["body"] for p in pages]
    finally:
        await nurse.close()


async def _notified(client: AsyncClient) -> list[str]:
    async with aiohttp.ClientSession() as http, http.get(
        client.homeserver + "/_matrix/client/v3/notifications?limit=50",
        headers={"Authorization": f"Bearer {client.access_token}"},
    ) as resp:
        body = await resp.json()
    return [n["event"]["content"].get("body", "") for n in body.get("notifications", [])]


async def test_off_duty_push_rules_silence_normal_messages_but_not_critical_ones(stack: RunningStack):
    # The ICU doctor (D2001) works day shifts: at 23:00 she is off duty.
    await set_clock(stack, tomorrow_at(23, 0))
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        assert await eventually(lambda: quiet_rule_in_place(stack, doctor), timeout=60, interval=1)
        created = await nurse.room_create(invite=[doctor.user_id, stack.bot_user_id])
        assert isinstance(created, RoomCreateResponse), created
        await doctor.join(created.room_id)

        async def bot_joined() -> bool:
            return (await members(nurse, created.room_id)).get(stack.bot_user_id) == "join"

        assert await eventually(bot_joined)
        normal = await nurse.room_send(created.room_id, "m.room.message", {"msgtype": "m.text", "body": "quiet-test routine question"})
        assert isinstance(normal, RoomSendResponse)
        url = f"{stack.url}/_matrix/client/v3/rooms/{created.room_id}/send/m.room.message/crit-{created.room_id[1:8]}"
        async with aiohttp.ClientSession() as http, http.put(
            url, json={"msgtype": "m.notice", "body": "quiet-test CRITICAL K+ 7.1", "org.carematrix.priority": "critical"},
            headers={"Authorization": f"Bearer {stack.deployment.secrets['as_token']}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
        # A member cannot fake a critical alert to break through.
        fake = await nurse.room_send(created.room_id, "m.room.message", {"msgtype": "m.text", "body": "x", "org.carematrix.priority": "critical"})
        assert not isinstance(fake, RoomSendResponse)

        async def only_critical() -> bool:
            bodies = await _notified(doctor)
            return "quiet-test CRITICAL K+ 7.1" in bodies and "quiet-test routine question" not in bodies

        assert await eventually(only_critical)

        # She mutes the room; a newer rule lands on top, so the service puts its
        # breakthrough rule back above it.
        mute = f"{stack.url}/_matrix/client/v3/pushrules/global/override/{created.room_id}"
        async with aiohttp.ClientSession() as http, http.put(
            mute, json={"conditions": [{"kind": "event_match", "key": "room_id", "pattern": created.room_id}], "actions": []},
            headers={"Authorization": f"Bearer {doctor.access_token}"},
        ) as resp:
            assert resp.status == 200, await resp.text()

        async def critical_above_mute() -> bool:
            async with aiohttp.ClientSession() as http, http.get(
                stack.url + "/_matrix/client/v3/pushrules/global/",
                headers={"Authorization": f"Bearer {doctor.access_token}"},
            ) as resp:
                ids = [r["rule_id"] for r in (await resp.json())["override"]]
            return ids.index("org.carematrix.critical") < ids.index(created.room_id)

        assert await eventually(critical_above_mute, timeout=60, interval=1)
    finally:
        await nurse.close()
        await doctor.close()


async def test_oncall_command_lists_who_holds_each_role(stack: RunningStack):
    await set_clock(stack, tomorrow_at(9, 0))
    nurse = await stack.login("n3002")
    try:
        room = await bot_dm(stack, nurse)
        body = await command(nurse, room, "!oncall cardiology", "Cardiology – attending on duty")
        assert "Cardiology – attending on duty: 李伟 Li Wei (D1001); from" in body and "20:00: 王芳 Wang Fang (D1002)" in body
    finally:
        await nurse.close()


async def test_in_a_group_room_only_a_mention_pages_the_role(stack: RunningStack):
    nurse = await stack.login("n3002")
    try:
        await set_clock(stack, tomorrow_at(14, 0))
        role = stack.user_id(ATTENDING)
        created = await nurse.room_create(name="ward 5A handover", invite=[role])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        assert await eventually(lambda: _joined(nurse, room, role))
        chatter = await nurse.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "Bed 4 discharged"})
        assert isinstance(chatter, RoomSendResponse)
        await asyncio.sleep(2)
        assert await paged_in(nurse, room) == set()
        mention = await nurse.room_send(room, "m.room.message", {
            "msgtype": "m.text", "body": "Cardiology – attending on duty: bed 6 troponin rising",
            "m.mentions": {"user_ids": [role]},
        })
        assert isinstance(mention, RoomSendResponse)
        assert await eventually(lambda: _paged_is(nurse, room, {stack.user_id("d1001")}), timeout=BACKLOG_SECONDS)
    finally:
        await nurse.close()


async def _joined(client: AsyncClient, room: str, user: str) -> bool:
    return (await members(client, room)).get(user) == "join"


async def test_swap_trades_the_next_shifts(stack: RunningStack):
    # A day no other test pages on: the swap stays in force on the shared stack, and tests
    # that page tomorrow's day attending expect the roster as written.
    await set_clock(stack, tomorrow_at(9, 0) + timedelta(days=20))
    night_doctor = await stack.login("d1002")
    try:
        room = await bot_dm(stack, night_doctor)
        # At 09:00 D1002 holds the day backup; her next attending shift is tonight at 20:00.
        body = await command(night_doctor, room, "!oncall swap cardiology/attending D1001", "Swapped")
        assert "王芳 Wang Fang (D1002) takes" in body and "李伟 Li Wei (D1001) takes" in body
        listing = await command(night_doctor, room, "!oncall cardiology", "心内科 · 主班医生")
        # Now D1002 holds the day shift and D1001 takes tonight.
        assert listing.startswith("心内科 · 主班医生 (值班) Cardiology – attending on duty: 王芳 Wang Fang (D1002)")
        assert "20:00: 李伟 Li Wei (D1001)" in listing
    finally:
        await night_doctor.close()


async def test_cover_by_anyone_but_the_holder_or_a_scheduler_is_refused_with_the_rule(stack: RunningStack):
    await set_clock(stack, tomorrow_at(9, 0))
    icu_nurse = await stack.login("n3001")
    try:
        room = await bot_dm(stack, icu_nurse)
        # An ICU nurse neither holds the cardiology attending role nor schedules.
        body = await command(icu_nurse, room, "!oncall cover cardiology/attending until 14:00 N3001", "Only whoever holds")
        assert body.endswith("staff with the role 'scheduler' may change who covers it. [rule oncall.cover]")
        listing = await command(icu_nurse, room, "!oncall cardiology", "Cardiology – attending on duty:")
        assert "Liu Yang" not in listing  # the roster is unchanged
    finally:
        await icu_nurse.close()
    denials = search(stack, "--actor", stack.user_id("n3001"), "--action", "policy.denied")
    assert any(r["rule"] == "oncall.cover" and r["object"] == "cover cardiology/attending" for r in denials), denials


async def test_broken_roster_feed_is_rejected_and_the_previous_roster_stays(stack: RunningStack):
    feed = stack.policy_dir / "rosters" / "cardiology.ics"
    good = feed.read_text()
    broken = good.replace("SUMMARY:Backup\nX-STAFF-NUMBER:D1001", "SUMMARY:Registrar\nX-STAFF-NUMBER:D1001")
    assert broken != good
    health_url = stack.deployment.settings.appservice_url + "/_carematrix/health"
    admin = await stack.login("a0001")
    try:
        office = (await admin.room_resolve_alias(f"#roster-office:{stack.server_name}")).room_id
        # Written in place the way a slow export arrives: half the file, a pause longer than
        # the appservice's poll interval, then the rest. Only the finished file is judged.
        with feed.open("w") as out:
            out.write(broken[: len(broken) // 2])
            out.flush()
            await asyncio.sleep(1.0)
            out.write(broken[len(broken) // 2 :])

        async def reported() -> str | None:
            async with aiohttp.ClientSession() as http, http.get(health_url) as resp:
                return (await resp.json()).get("roster_feed_errors", {}).get("cardiology-roster")

        error = await eventually(reported)
        assert "rosters/cardiology.ics:" in error and "Registrar" in error

        async def rejections() -> list[str]:
            return [n["content"]["body"] for n in await notices(admin, office)
                    if "cardiology-roster" in n["content"]["body"] and "previous roster stays" in n["content"]["body"]]

        async def told_of_the_edit() -> bool:
            return any("Registrar" in body for body in await rejections())

        assert await eventually(told_of_the_edit)
        # told once, about the roster as sent, never about the half-written file
        told = await rejections()
        assert len(told) == 1, told
        # The previous roster is still in force: tonight's backup is still the chief.
        nurse = await stack.login("n3002")
        try:
            room = await page(stack, nurse, "role-cardiology-backup", tomorrow_at(23, 0), "Bed 1: need backup")
            assert await eventually(lambda: _paged_is(nurse, room, {stack.user_id("d1001")}), timeout=BACKLOG_SECONDS)
        finally:
            await nurse.close()
    finally:
        feed.write_text(good)
        await admin.close()

    async def recovered() -> bool:
        async with aiohttp.ClientSession() as http, http.get(health_url) as resp:
            return "roster_feed_errors" not in await resp.json()

    assert await eventually(recovered)


async def test_role_alias_leads_to_a_desk_room_that_pages_the_role(stack: RunningStack):
    await set_clock(stack, tomorrow_at(10, 0))
    nurse = await stack.login("n3001")
    try:
        joined = await nurse.join(f"#role-icu-doctor:{stack.server_name}")
        assert joined.__class__.__name__ == "JoinResponse", joined
        room = joined.room_id
        assert await eventually(lambda: _joined(nurse, room, stack.user_id(ICU)))
        sent = await nurse.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "Bed 8 extubation check please"})
        assert isinstance(sent, RoomSendResponse)
        assert await eventually(lambda: _paged_is(nurse, room, {stack.user_id("d2001")}), timeout=BACKLOG_SECONDS)
    finally:
        await nurse.close()


async def test_staff_choose_quiet_hours_with_a_command(stack: RunningStack):
    await set_clock(stack, tomorrow_at(23, 30))
    doctor = await stack.login("d2001")
    try:
        async def override_ids() -> list[str]:
            async with aiohttp.ClientSession() as http, http.get(
                stack.url + "/_matrix/client/v3/pushrules/global/",
                headers={"Authorization": f"Bearer {doctor.access_token}"},
            ) as resp:
                return [r["rule_id"] for r in (await resp.json())["override"]]

        room = await bot_dm(stack, doctor)
        await doctor.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "!quiet off"})

        async def quiet_gone() -> bool:
            return "org.carematrix.quiet_hours" not in await override_ids()

        assert await eventually(quiet_gone, timeout=60, interval=1)
        await doctor.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "!quiet on"})

        async def quiet_back() -> bool:
            return "org.carematrix.quiet_hours" in await override_ids()

        assert await eventually(quiet_back, timeout=60, interval=1)
    finally:
        await doctor.close()
