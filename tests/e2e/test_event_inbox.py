"""Never silent across a crash: a nurse's page and a doctor's ``!ack`` that the appservice
had accepted — the homeserver had its answer (200) for their transactions and never sends
them again — but had not yet acted on when it was killed are carried out after the restart,
once each (appservice.inbox). A real Synapse and appservice; the crash lands at that exact
point through the test holds (appservice.holds: delivered events wait before their handlers
run), then SIGKILL."""

from __future__ import annotations

from datetime import datetime

from nio import AsyncClient, RoomSendResponse

from tests.e2e.test_oncall import ATTENDING, bot_dm, dm_role
from tests.oncall_support import HOSPITAL_TZ, held, holds, notices, paged_in, set_clock, tomorrow_at
from tests.support import RunningStack, eventually


def attending_now() -> str:
    """Who holds the cardiology attending role by the real clock (the demo roster: D1001 from
    08:00 to 20:00, D1002 overnight): a restarted appservice has the real clock again."""
    return "d1001" if 8 <= datetime.now(HOSPITAL_TZ).hour < 20 else "d1002"


async def send_text(client: AsyncClient, room: str, body: str) -> str:
    sent = await client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})
    assert isinstance(sent, RoomSendResponse), sent
    return sent.event_id


async def page_notices(client: AsyncClient, room: str) -> list[dict]:
    return [n for n in await notices(client, room) if n["content"].get("org.carematrix.page")]


async def test_a_page_and_an_ack_accepted_just_before_the_appservice_died_are_carried_out_once_after_the_restart(
    stack: RunningStack,
):
    # A page that is open before the crash, for the doctor's !ack (D1002 holds the role tonight).
    await set_clock(stack, tomorrow_at(22, 0))
    nurse = await stack.login("n3002")
    doctor = await stack.login("d1002")
    log_path = stack.deployment.paths.appservice_log
    log_offset = log_path.stat().st_size
    killed = False
    try:
        first = await dm_role(stack, nurse, ATTENDING)
        await send_text(nurse, first, "Bed 21: 胸痛 chest pain, troponin pending")
        assert await eventually(lambda: _paged_is(nurse, first, {stack.user_id("d1002")}))
        alert_id = (await page_notices(nurse, first))[0]["content"]["org.carematrix.alert_id"]
        doctor_dm = await bot_dm(stack, doctor)
        second = await dm_role(stack, nurse, ATTENDING)
        expected = {attending_now()}

        await holds(stack, events=True)
        page = await send_text(nurse, second, "Bed 22: 血钾 6.9 K+ 6.9, ECG changes")
        assert await eventually(lambda: held(stack, "events", page))
        ack = await send_text(doctor, doctor_dm, f"!ack {alert_id}")
        assert await eventually(lambda: held(stack, "events", ack))
        # The homeserver sends one transaction at a time: once a message sent after them is
        # held too, it had its answer for the page's and the !ack's.
        later = await send_text(doctor, doctor_dm, "谢谢 thanks")
        assert await eventually(lambda: held(stack, "events", later))
        assert await page_notices(nurse, second) == []
        stack.stack.appservice.kill()  # SIGKILL: nothing is said, nothing is flushed
        killed = True
    finally:
        if not killed:
            await holds(stack, events=False)
    stack.stack.restart_appservice()  # returns once it is ready: what it took up is handled
    expected.add(attending_now())
    try:
        (notice,) = await eventually(lambda: page_notices(nurse, second))
        paged = set(notice["content"]["m.mentions"]["user_ids"])
        assert paged in ({stack.user_id(d)} for d in expected), paged
        assert "血钾 6.9" in notice["content"]["body"]

        async def acknowledged() -> list[str]:
            return [n["content"]["body"] for n in await notices(nurse, first)
                    if f"acknowledged page [{alert_id}]" in n["content"]["body"]]

        (told,) = await eventually(acknowledged)
        assert "王芳 Wang Fang (D1002)" in told
        # Anything the service still had to do for them is done before it answers a later
        # command: then each was carried out once.
        await send_text(doctor, doctor_dm, "!ping")
        assert await eventually(lambda: _answered(doctor, doctor_dm))
        assert len(await page_notices(nurse, second)) == 1
        assert len(await acknowledged()) == 1
        replies = [n for n in await notices(doctor, doctor_dm) if f"Acknowledged page [{alert_id}]" in n["content"]["body"]]
        assert len(replies) == 1
        log = log_path.read_bytes()[log_offset:].decode("utf-8", "replace").splitlines()
        for event_id in (page, ack):
            assert any(" WARNING " in line and "taking up" in line and event_id in line for line in log), event_id
    finally:
        await nurse.close()
        await doctor.close()


async def _paged_is(client: AsyncClient, room: str, who: set[str]) -> bool:
    return (await paged_in(client, room)) == who


async def _answered(client: AsyncClient, room: str) -> bool:
    return any(n["content"]["body"].startswith("pong") for n in await notices(client, room))
