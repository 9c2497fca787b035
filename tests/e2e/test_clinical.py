"""HL7 v2 from the HIS over a real TCP socket (MLLP) into the conversation: admissions in the
ward room, a critical potassium paging the on-duty nurse and escalating, malformed messages
refused with a NAK and a dead letter, and the HIS asking whether its alert was acknowledged."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import aiohttp
import pytest
from nio import AsyncClient, RoomSendResponse

from bridges.hl7.mllp import MllpDecoder, frame
from bridges.hl7.parse import parse
from tests.clinical_support import ack_code, bodies, hl7, send_many, send_mllp, team
from tests.oncall_support import notices, paged_in, quiet_rule_in_place, set_clock, tomorrow_at
from tests.support import RunningStack, eventually

# Also run on the worker deployment (tests/conftest.py).
pytestmark = pytest.mark.worker_pass


async def test_admission_is_posted_in_the_ward_room_once_even_if_resent(stack: RunningStack):
    nurse = await stack.login("n3001")
    try:
        icu = await team(stack, nurse, "icu")
        patient = f"P{uuid.uuid4().hex[:6].upper()}"
        control, payload = hl7(
            f"EVN|A01|{datetime.now():%Y%m%d%H%M}",
            f"PID|1||{patient}^^^RENHE^MR||王^建国||19540312|M",
            "PV1|1|I|ICU^07^07||||D2001^陈^静",
            charset="GB 18030-2000",
        )
        ack = await send_mllp(stack, payload)
        assert ack_code(ack) == "AA" and ack.get("MSA", 2) == control  # type: ignore[attr-defined]
        again = await send_mllp(stack, payload)  # the HIS lost the ACK and resends
        assert ack_code(again) == "AA"

        async def posted() -> list[str]:
            return [b for b in await bodies(nurse, icu) if patient in b]

        found = await eventually(posted)
        assert found[0].startswith(f"入院 Admission: 王建国 ({patient}) to ICU bed 07")
        await asyncio.sleep(2)
        assert len(await posted()) == 1
    finally:
        await nurse.close()


async def test_critical_potassium_pages_the_on_duty_nurse_and_escalates(stack: RunningStack):
    start = tomorrow_at(10, 0)
    await set_clock(stack, start)
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        icu = await team(stack, nurse, "icu")
        patient = f"P{uuid.uuid4().hex[:6].upper()}"
        _, adt = hl7(f"PID|1||{patient}^^^RENHE^MR||李^秀英||19600101|F", "PV1|1|I|ICU^03^03")
        assert ack_code(await send_mllp(stack, adt)) == "AA"
        control, oru = hl7(
            f"PID|1||{patient}^^^RENHE^MR||李^秀英||19600101|F",
            "OBR|1|ORD1|LAB1|BMP^Basic metabolic panel|||202611251000|||||||||D2001",
            "OBX|1|NM|2823-3^Potassium||6.8|mmol/L|3.5-5.3|HH|||F",
            "OBX|2|NM|2951-2^Sodium||139|mmol/L|137-147|N|||F",
            kind="ORU^R01", facility="LIS",
        )
        assert ack_code(await send_mllp(stack, oru)) == "AA"

        async def alerted() -> str | None:
            for n in await notices(nurse, icu):
                c = n["content"]
                if c["body"].startswith("危急值 CRITICAL RESULT") and patient in str(c.get("org.carematrix.hl7")):
                    return n["event_id"] if c.get("org.carematrix.priority") == "critical" else None
            return None

        assert await eventually(alerted)
        body = next(b for b in await bodies(nurse, icu) if b.startswith("危急值 CRITICAL RESULT") and "李秀英" in b)
        assert "Potassium 6.8 mmol/L [HH]" in body and "Sodium" not in body
        assert await eventually(lambda: _has_paged(nurse, icu, {stack.user_id("n3001"), stack.user_id("d2001")}))

        url = f"{stack.deployment.settings.appservice_url}/_carematrix/alerts/LIS/{control}"
        headers = {"Authorization": f"Bearer {stack.deployment.secrets['his_token']}"}

        async def state() -> dict:
            async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                return await resp.json()

        assert (await state())["acknowledged"] is False
        # Nobody answers the nurse's page for two minutes: it climbs to the ICU doctor.
        await set_clock(stack, start + timedelta(minutes=2, seconds=10))

        async def escalated() -> bool:
            s = await state()
            nurse_page = next(p for p in s["pages"] if p["role"] == "icu/nurse")
            return nurse_page["step"] >= 1 and len(nurse_page["paged"]) == 2

        assert await eventually(escalated)
        # The doctor holds two pages for this alert (his own role's, and the nurse's
        # escalation): each acknowledgement covers one, and the alert is acknowledged only
        # once both are (the policy's acknowledged_when: all).
        async def pages_for_doctor() -> list[dict]:
            found = [
                n for n in await notices(doctor, icu)
                if n["content"].get("org.carematrix.page") and patient in n["content"]["body"]
                and stack.user_id("d2001") in n["content"]["m.mentions"]["user_ids"]
            ]
            return found if len(found) == 2 else []

        doctor_pages = await eventually(pages_for_doctor)
        for done, page_notice in enumerate(doctor_pages, start=1):
            assert (await state())["acknowledged"] is False
            reacted = await doctor.room_send(icu, "m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": page_notice["event_id"], "key": "✅"}})
            assert isinstance(reacted, RoomSendResponse)
            await eventually(lambda n=done: _acked_count_at_least(state, n))

        async def acknowledged() -> dict | None:
            s = await state()
            return s if s["acknowledged"] else None

        s = await eventually(acknowledged)
        assert s["acknowledged_when"] == "all"
        assert all(p["acknowledged_by"] == "陈静 Chen Jing (D2001)" for p in s["pages"])
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 401  # the HIS must present its token
    finally:
        await nurse.close()
        await doctor.close()


async def _acked_count_at_least(state: object, n: int) -> bool:
    return sum(p["state"] == "acked" for p in (await state())["pages"]) >= n  # type: ignore[operator]


async def _has_paged(client: AsyncClient, room: str, who: set[str]) -> bool:
    return who <= await paged_in(client, room)


async def test_malformed_hl7_gets_a_nak_and_a_dead_letter(stack: RunningStack):
    health = stack.deployment.settings.appservice_url + "/_carematrix/health"

    async def dead_letters() -> int:
        async with aiohttp.ClientSession() as http, http.get(health) as resp:
            return (await resp.json())["hl7"]["dead_letter"]

    before = await dead_letters()
    _, no_patient = hl7("PID|1||||无名||19700101|M", "PV1|1|I|ICU^01^01")
    nak = await send_mllp(stack, no_patient)
    assert ack_code(nak) == "AE"
    assert "PID-3" in str(nak.get("ERR", 2)) or "PID" in nak.raw_text  # type: ignore[attr-defined]
    garbage = await send_mllp(stack, b"this is not HL7 at all\r")
    assert ack_code(garbage) == "AR"
    _, stranger = hl7("PID|1||X1^^^RENHE^MR||A^B", "PV1|1|I|ICU^01^01", facility="UNKNOWN-CLINIC")
    assert ack_code(await send_mllp(stack, stranger)) == "AR"
    assert await dead_letters() == before + 3


async def dead_letter_count(stack: RunningStack) -> int:
    async with aiohttp.ClientSession() as http, http.get(stack.deployment.settings.appservice_url + "/_carematrix/health") as resp:
        return (await resp.json())["hl7"]["dead_letter"]


async def test_oversize_hl7_gets_ar_naming_the_limit_and_the_next_message_on_the_same_connection_is_posted(stack: RunningStack):
    limit = 1 << 20  # the default, which the test stack keeps
    before = await dead_letter_count(stack)
    nurse = await stack.login("n3001")
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.deployment.settings.hl7_port)
    decoder = MllpDecoder()

    async def answer() -> object:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 60)
            assert data, "connection closed without an ACK"
            if acks := decoder.feed(data):
                return parse(acks[0])

    try:
        icu = await team(stack, nurse, "icu")
        patient = f"P{uuid.uuid4().hex[:6].upper()}"
        # An admission with a scanned document pasted into a note: over the limit.
        control, big = hl7(
            f"PID|1||{patient}^^^RENHE^MR||赵^大||19500101|M", "PV1|1|I|ICU^02^02",
            "NTE|1||" + "A" * limit,
        )
        writer.write(frame(big))
        await writer.drain()
        refused = await answer()
        assert ack_code(refused) == "AR" and refused.get("MSA", 2) == control  # type: ignore[attr-defined]
        err = next(line for line in refused.raw_text.split("\r") if line.startswith("ERR|"))  # type: ignore[attr-defined]
        assert "message exceeds the 1 MiB limit" in err
        assert await dead_letter_count(stack) == before + 1

        # The HIS sends the admission again without the attachment, on the same connection.
        control, adt = hl7(f"PID|1||{patient}^^^RENHE^MR||赵^大||19500101|M", "PV1|1|I|ICU^02^02")
        writer.write(frame(adt))
        await writer.drain()
        accepted = await answer()
        assert ack_code(accepted) == "AA" and accepted.get("MSA", 2) == control  # type: ignore[attr-defined]

        async def posted() -> list[str]:
            return [b for b in await bodies(nurse, icu) if patient in b]

        assert (await eventually(posted))[0].startswith(f"入院 Admission: 赵大 ({patient}) to ICU bed 02")
    finally:
        writer.close()
        await nurse.close()


async def test_half_hl7_frame_held_open_is_dead_lettered_and_closed_but_an_idle_connection_stays(stack: RunningStack):
    port = stack.deployment.settings.hl7_port
    before = await dead_letter_count(stack)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        _, adt = hl7("PID|1||H0001^^^RENHE^MR||钱^二||19700101|M", "PV1|1|I|ICU^04^04")
        writer.write(frame(adt)[: len(adt) // 2])  # the HIS stalls in the middle of a message
        await writer.drain()
        assert await asyncio.wait_for(reader.read(65536), 120) == b"", "the half frame got an answer"
        assert await dead_letter_count(stack) == before + 1
        # A connection that was open all the while, with no message started, still works.
        idle_writer.write(frame(hl7("PID|1||H0002^^^RENHE^MR||孙^三||19700101|M", "PV1|1|I|ICU^04^04")[1]))
        await idle_writer.drain()
        decoder = MllpDecoder()
        while not (acks := decoder.feed(data := await asyncio.wait_for(idle_reader.read(65536), 30))):
            assert data, "the idle connection was closed"
        assert ack_code(parse(acks[0])) == "AA"
    finally:
        writer.close()
        idle_writer.close()


async def test_kill_9_with_messages_queued_delivers_each_exactly_once(stack: RunningStack):
    nurse = await stack.login("n3001")
    try:
        icu = await team(stack, nurse, "icu")
        batch = uuid.uuid4().hex[:4].upper()
        patients = [f"K{batch}{i:03d}" for i in range(40)]
        payloads = [hl7(f"PID|1||{pid}^^^RENHE^MR||测试^{pid}||19700101|M", "PV1|1|I|ICU^09^09")[1] for pid in patients]
        assert await send_many(stack, payloads) == ["AA"] * len(patients)
        # Every message is acknowledged, so stored; the appservice dies while delivering.
        stack.stack.appservice.kill()
        delivered_before = len([b for b in await bodies(nurse, icu) if f"K{batch}" in b])
        stack.stack.restart_appservice()

        async def all_posted() -> bool:
            found = [b for b in await bodies(nurse, icu) if f"K{batch}" in b]
            return len({pid for pid in patients if any(pid in b for b in found)}) == len(patients)

        assert await eventually(all_posted, timeout=90, interval=1)
        await asyncio.sleep(3)
        found = [b for b in await bodies(nurse, icu) if f"K{batch}" in b]
        assert len(found) == len(patients), (
            f"{len(found)} notices for {len(patients)} messages ({delivered_before} were out before the kill)"
        )
    finally:
        await nurse.close()


async def test_critical_result_rings_through_quiet_hours_but_routine_notices_do_not(stack: RunningStack):
    # 23:00: the ICU doctor (D2001, day shifts) is off duty with quiet hours on, and still a
    # member of the ICU team room where the alert is posted.
    await set_clock(stack, tomorrow_at(23, 0))
    doctor = await stack.login("d2001")
    try:
        assert await eventually(lambda: quiet_rule_in_place(stack, doctor), timeout=60, interval=1)
        patient = f"Q{uuid.uuid4().hex[:6].upper()}"
        _, adt = hl7(f"PID|1||{patient}^^^RENHE^MR||周^敏||19700101|F", "PV1|1|I|ICU^05^05")
        assert ack_code(await send_mllp(stack, adt)) == "AA"
        nurse = await stack.login("n3001")
        try:
            icu = await team(stack, nurse, "icu")
            sent = await nurse.room_send(icu, "m.room.message", {"msgtype": "m.text", "body": f"routine: {patient} slept well"})
            assert isinstance(sent, RoomSendResponse)
        finally:
            await nurse.close()
        _, oru = hl7(
            f"PID|1||{patient}^^^RENHE^MR||周^敏||19700101|F", "PV1|1|I|ICU^05^05",
            "OBR|1|ORD9|LAB9|BMP^Basic metabolic panel|||202611252300",
            "OBX|1|NM|2823-3^Potassium||2.1|mmol/L|3.5-5.3|LL|||F",
            kind="ORU^R01", facility="LIS",
        )
        assert ack_code(await send_mllp(stack, oru)) == "AA"

        async def notified() -> list[str]:
            async with aiohttp.ClientSession() as http, http.get(
                stack.url + "/_matrix/client/v3/notifications?limit=100",
                headers={"Authorization": f"Bearer {doctor.access_token}"},
            ) as resp:
                body = await resp.json()
            return [n["event"]["content"].get("body", "") for n in body.get("notifications", [])]

        async def alert_rang() -> bool:
            return any(b.startswith("危急值 CRITICAL RESULT") and patient in b for b in await notified())

        assert await eventually(alert_rang)
        # The colleague's routine message, sent before the alert, is in the room but did not ring.
        assert not any(b.startswith("routine:") and patient in b for b in await notified())
    finally:
        await doctor.close()
