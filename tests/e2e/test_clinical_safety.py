"""Clinical safety scenarios, as a hospital produces them: results for patients the messenger
has no ward for, two alerts on one nurse, transfers while a page is open, a crash while a page
waits. Each runs against a real Synapse and appservice, with the HIS played over MLLP."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta

import aiohttp
from nio import AsyncClient, RoomSendResponse

from tests.clinical_support import (
    ack_code,
    alert_state,
    direct_chat_with_service,
    hl7,
    report_ready,
    send_many,
    send_mllp,
    team,
)
from tests.e2e.test_oncall import ATTENDING, BACKLOG_SECONDS, dm_role
from tests.oncall_support import held, holds, notices, set_clock, tomorrow_at
from tests.support import RunningStack, eventually


def critical_oru(patient: str, name: str, value: str = "7.2", flag: str = "HH", *, pv1: str | None = None,
                 orderer: str = "D1001") -> tuple[str, bytes]:
    segments = [f"PID|1||{patient}^^^RENHE^MR||{name}||19600101|F"]
    if pv1:
        segments.append(pv1)
    segments += [
        f"OBR|1|ORD{patient}|LAB{patient}|BMP^Basic metabolic panel|||202611251000|||||||||{orderer}",
        f"OBX|1|NM|2823-3^Potassium||{value}|mmol/L|3.5-5.3|{flag}|||F",
    ]
    return hl7(*segments, kind="ORU^R01", facility="LIS")


def new_patient() -> str:
    return f"P{uuid.uuid4().hex[:7].upper()}"


async def page_notices(client: AsyncClient, room: str, patient: str) -> list[dict]:
    return [n for n in await notices(client, room)
            if n["content"].get("org.carematrix.page") and patient in n["content"]["body"]]


async def integration_notices(stack: RunningStack, client: AsyncClient) -> list[str]:
    room = (await client.room_resolve_alias(f"#clinical-integration:{stack.server_name}")).room_id
    await client.join(room)
    return [n["content"]["body"] for n in await notices(client, room)]


async def test_critical_result_for_a_patient_with_no_ward_pages_the_ordering_doctor_then_the_safety_net(
    stack: RunningStack,
):
    start = tomorrow_at(10, 0)  # D2001 holds the hospital duty doctor role by day
    await set_clock(stack, start)
    patient = new_patient()
    control, oru = critical_oru(patient, "孤^立")  # no PV1, never admitted: no ward anywhere
    assert ack_code(await send_mllp(stack, oru)) == "AA"
    # The alert exists from the moment the message is stored: never a 404 for an accepted one.
    status, _ = await alert_state(stack, "LIS", control)
    assert status == 200

    async def routed() -> dict | None:
        s = (await alert_state(stack, "LIS", control))[1]
        return s if s["pages"] and s["status"] == "delivered" else None

    state = await eventually(routed)
    assert "no ward known" in state["routing"] and "ordering doctor" in state["routing"]
    assert state["pages"][0]["paged"] == ["李伟 Li Wei (D1001)"] and state["acknowledged"] is False

    doctor = await stack.login("d1001")
    admin = await stack.login("a0001")
    duty = await stack.login("d2001")
    try:
        told = await eventually(lambda: _matching(integration_notices(stack, admin), patient))
        room = re.search(r"matrix\.to/#/(![^\s]+)", told).group(1)  # type: ignore[union-attr]
        assert "no ward known" in told
        await doctor.join(room)
        name = await doctor.room_get_state_event(room, "m.room.name")
        assert name.content["name"] == f"危急值 Critical result · 孤立 ({patient})"  # type: ignore[union-attr]
        page = (await eventually(lambda: page_notices(doctor, room, patient)))[0]["content"]
        assert "孤立" in page["body"] and "Potassium 7.2 mmol/L [HH]" in page["body"]
        assert f"!ack {state['pages'][0]['alert_id']}" in page["body"]
        assert page["m.mentions"]["user_ids"] == [stack.user_id("d1001")]

        # The ordering doctor does not answer within 5 minutes: the duty doctor is paged.
        await set_clock(stack, start + timedelta(minutes=5, seconds=5))

        async def escalated() -> bool:
            s = (await alert_state(stack, "LIS", control))[1]
            return "陈静 Chen Jing (D2001)" in s["pages"][0]["paged"]

        assert await eventually(escalated)
        await duty.join(room)
        async def duty_page() -> dict | None:
            for n in await page_notices(duty, room, patient):
                if stack.user_id("d2001") in n["content"]["m.mentions"]["user_ids"]:
                    return n
            return None

        notice = await eventually(duty_page)
        sent = await duty.room_send(room, "m.reaction", {
            "m.relates_to": {"rel_type": "m.annotation", "event_id": notice["event_id"], "key": "👍"}})
        assert isinstance(sent, RoomSendResponse)

        async def acknowledged() -> dict | None:
            s = (await alert_state(stack, "LIS", control))[1]
            return s if s["acknowledged"] else None

        s = await eventually(acknowledged)
        assert s["pages"][0]["acknowledged_by"] == "陈静 Chen Jing (D2001)"
        assert s["pages"][0]["acknowledged_at"].endswith("+08:00")  # the hospital's time zone
    finally:
        for c in (doctor, admin, duty):
            await c.close()


async def test_a_critical_result_with_no_ward_reaches_the_ordering_doctor_at_once_in_their_direct_chat_with_the_service(
    stack: RunningStack,
):
    """A doctor who has the service's direct chat (report notices come there) is paged there
    first, with the page's own alert ID; the alert room still follows. A reaction on that
    notice acknowledges exactly that page."""
    await set_clock(stack, tomorrow_at(10, 0) + timedelta(days=7))
    doctor = await stack.login("d1002")
    try:
        earlier = new_patient()
        await report_ready(stack.deployment, "D1002", earlier)
        direct = await direct_chat_with_service(doctor, earlier)

        patient = new_patient()
        control, oru = critical_oru(patient, "孤^单", orderer="D1002")  # no PV1, no ADT, not in the EMR
        assert ack_code(await send_mllp(stack, oru)) == "AA"
        page = (await eventually(lambda: page_notices(doctor, direct, patient)))[0]

        async def routed() -> dict | None:
            s = (await alert_state(stack, "LIS", control))[1]
            return s if s["pages"] and s["status"] == "delivered" else None

        state = await eventually(routed)
        assert "no ward known" in state["routing"] and "ordering doctor" in state["routing"]
        alert = state["pages"][0]
        assert alert["paged"] == ["王芳 Wang Fang (D1002)"]
        body = page["content"]["body"]
        assert "孤单" in body and "Potassium 7.2 mmol/L [HH]" in body and f"!ack {alert['alert_id']}" in body
        assert page["content"]["m.mentions"]["user_ids"] == [stack.user_id("d1002")]
        assert page["content"]["org.carematrix.priority"] == "critical"

        async def invited_to_alert_room() -> bool:
            await doctor.sync(timeout=1000)
            return any(patient in (r.name or "") for r in doctor.invited_rooms.values())

        assert await eventually(invited_to_alert_room)

        # Reading it there marks the page seen (a critical page is not acknowledged by reading).
        await doctor.room_read_markers(direct, page["event_id"], page["event_id"])

        async def seen() -> dict | None:
            s = (await alert_state(stack, "LIS", control))[1]
            return s if s["pages"][0]["seen_by"] else None

        s = await eventually(seen)
        assert s["pages"][0]["seen_by"][0]["by"] == "王芳 Wang Fang (D1002)" and not s["acknowledged"]

        sent = await doctor.room_send(direct, "m.reaction", {
            "m.relates_to": {"rel_type": "m.annotation", "event_id": page["event_id"], "key": "👍"}})
        assert isinstance(sent, RoomSendResponse)

        async def acknowledged() -> dict | None:
            s = (await alert_state(stack, "LIS", control))[1]
            return s if s["acknowledged"] else None

        s = await eventually(acknowledged)
        assert s["pages"][0]["acknowledged_by"] == "王芳 Wang Fang (D1002)"
    finally:
        await doctor.close()


async def _matching(texts: object, needle: str) -> str | None:
    for text in await texts:  # type: ignore[misc]
        if needle in text:
            return text
    return None


async def test_a_message_nobody_can_be_told_about_is_an_error_in_the_integration_room_and_in_status(
    stack: RunningStack,
):
    patient = new_patient()
    control, adt = hl7(f"PID|1||{patient}^^^RENHE^MR||无^病区||19700101|M", "PV1|1|I|NOWHERE^01^01")
    assert ack_code(await send_mllp(stack, adt)) == "AA"
    admin = await stack.login("a0001")
    try:
        told = await eventually(lambda: _matching(integration_notices(stack, admin), control))
        assert told.startswith("未送达 UNDELIVERED admission") and "'NOWHERE' is not in the clinical policy" in told
    finally:
        await admin.close()
    health = stack.deployment.settings.appservice_url + "/_carematrix/health"
    async with aiohttp.ClientSession() as http, http.get(health) as resp:
        body = await resp.json()
    assert any(u["control_id"] == control for u in body["undelivered"])
    status, state = await alert_state(stack, "HIS", control)
    assert status == 200 and state["status"] == "unroutable" and "NOWHERE" in state["routing"]
    log = stack.deployment.paths.appservice_log.read_text(encoding="utf-8")
    assert any(" ERROR " in line and control in line for line in log.splitlines())


async def test_two_critical_alerts_for_two_patients_on_one_nurse_are_acknowledged_one_at_a_time(
    stack: RunningStack,
):
    await set_clock(stack, tomorrow_at(10, 0))
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        icu = await team(stack, nurse, "icu")
        first, second = new_patient(), new_patient()
        c1, oru1 = critical_oru(first, "王^建国", "7.2", "HH", pv1="PV1|1|I|ICU^03^03")
        c2, oru2 = critical_oru(second, "李^秀英", "2.1", "LL", pv1="PV1|1|I|ICU^05^05")
        assert ack_code(await send_mllp(stack, oru1)) == "AA"
        assert ack_code(await send_mllp(stack, oru2)) == "AA"

        async def nurse_page(patient: str) -> dict | None:
            for n in await page_notices(nurse, icu, patient):
                if stack.user_id("n3001") in n["content"].get("m.mentions", {}).get("user_ids", []):
                    return n
            return None

        p1 = await eventually(lambda: nurse_page(first))
        p2 = await eventually(lambda: nurse_page(second))
        assert "王建国" in p1["content"]["body"] and "7.2" in p1["content"]["body"] and "ICU bed 03" in p1["content"]["body"]
        assert "李秀英" in p2["content"]["body"] and "王建国" not in p2["content"]["body"]
        id1, id2 = p1["content"]["org.carematrix.alert_id"], p2["content"]["org.carematrix.alert_id"]
        assert id1 != id2

        # A plain chat message by the doctor acknowledges nothing; reading marks seen only.
        chat = await doctor.room_send(icu, "m.room.message", {"msgtype": "m.text", "body": "on my way to bed 3"})
        assert isinstance(chat, RoomSendResponse)
        await nurse.room_read_markers(icu, p2["event_id"], p2["event_id"])

        async def seen() -> bool:
            s = (await alert_state(stack, "LIS", c2))[1]
            # the nurse's page may be posted a moment before the alert's state lists it
            nurse_page_state = next((p for p in s["pages"] if p["role"] == "icu/nurse"), None)
            return bool(nurse_page_state and nurse_page_state["seen_by"])

        assert await eventually(seen)

        # The nurse reacts to the second page: that page only.
        sent = await nurse.room_send(icu, "m.reaction", {
            "m.relates_to": {"rel_type": "m.annotation", "event_id": p2["event_id"], "key": "👍"}})
        assert isinstance(sent, RoomSendResponse)

        async def page_state(control: str, role: str) -> str:
            s = (await alert_state(stack, "LIS", control))[1]
            return next(p["state"] for p in s["pages"] if p["role"] == role)

        assert await eventually(lambda: _is(page_state(c2, "icu/nurse"), "acked"))
        await asyncio.sleep(2)
        assert await page_state(c1, "icu/nurse") == "open"
        assert await page_state(c1, "icu/doctor") == "open"
        assert await page_state(c2, "icu/doctor") == "open"
        s2 = (await alert_state(stack, "LIS", c2))[1]
        assert s2["acknowledged"] is False  # the doctor's page is still open (acknowledged_when: all)
        acks = [b["content"]["body"] for b in await notices(nurse, icu) if f"page [{id2}]" in b["content"]["body"]
                and "acknowledged" in b["content"]["body"]]
        assert len(acks) == 1  # one notice per acknowledgement

        # "!ack <id>" acknowledges exactly the first patient's page.
        sent = await nurse.room_send(icu, "m.room.message", {"msgtype": "m.text", "body": f"!ack {id1.lower()}"})
        assert isinstance(sent, RoomSendResponse)
        assert await eventually(lambda: _is(page_state(c1, "icu/nurse"), "acked"))
        assert await page_state(c1, "icu/doctor") == "open"
    finally:
        await nurse.close()
        await doctor.close()


async def _is(value: object, expected: str) -> bool:
    return await value == expected  # type: ignore[misc]


async def test_a_transfer_tells_the_ward_left_and_the_ward_joined_and_brings_the_new_ward_into_an_open_alert(
    stack: RunningStack,
):
    await set_clock(stack, tomorrow_at(10, 0))
    patient = new_patient()
    _, adt = hl7(f"PID|1||{patient}^^^RENHE^MR||赵^转科||19500101|M", "PV1|1|I|ICU^02^02")
    assert ack_code(await send_mllp(stack, adt)) == "AA"
    control, oru = critical_oru(patient, "赵^转科")  # no PV1: the ward comes from the ADT
    assert ack_code(await send_mllp(stack, oru)) == "AA"
    nurse = await stack.login("n3001")
    ward_nurse = await stack.login("n3002")  # 5A's head nurse
    try:
        icu = await team(stack, nurse, "icu")
        assert await eventually(lambda: page_notices(nurse, icu, patient))
        s = await eventually(lambda: _delivered(stack, control))
        assert "ward ICU from the patient's last ADT" in s["routing"]
        _, a02 = hl7(f"PID|1||{patient}^^^RENHE^MR||赵^转科||19500101|M", "PV1|1|I|5A^12^12|||ICU^02^02", kind="ADT^A02")
        assert ack_code(await send_mllp(stack, a02)) == "AA"
        ward5a = await team(stack, ward_nurse, "cardiology-ward-5a")

        async def told(client: AsyncClient, room: str) -> list[str]:
            return [n["content"]["body"] for n in await notices(client, room)
                    if n["content"]["body"].startswith("转科 Transfer:") and patient in n["content"]["body"]]

        icu_told = await eventually(lambda: told(nurse, icu))
        assert "from ICU to 5A bed 12" in icu_told[0]
        assert await eventually(lambda: told(ward_nurse, ward5a))

        # The open alert follows the patient: 5A's on-duty doctor is paged for it. He is
        # cardiology staff, not 5A's, so he cannot join 5A's room: he is paged in a direct
        # chat with the role, and the room is told so.
        async def followed() -> bool:
            s = (await alert_state(stack, "LIS", control))[1]
            return any(p["role"] == "cardiology/attending" and "李伟 Li Wei (D1001)" in p["paged"] for p in s["pages"])

        assert await eventually(followed)
        assert await eventually(lambda: page_notices(ward_nurse, ward5a, patient))

        async def said_where() -> bool:
            return any("李伟 Li Wei (D1001) cannot join this room" in n["content"]["body"]
                       and "direct chat" in n["content"]["body"] for n in await notices(ward_nurse, ward5a))

        assert await eventually(said_where)

        # A03 without a ward of its own: the ward the patient left (5A, from the transfer) is told.
        _, a03 = hl7(f"PID|1||{patient}^^^RENHE^MR||赵^转科||19500101|M", "PV1|1|I", kind="ADT^A03")
        assert ack_code(await send_mllp(stack, a03)) == "AA"

        async def discharged() -> list[str]:
            return [n["content"]["body"] for n in await notices(ward_nurse, ward5a)
                    if n["content"]["body"].startswith("出院 Discharge:") and patient in n["content"]["body"]]

        assert "from 5A" in (await eventually(discharged))[0]
    finally:
        await nurse.close()
        await ward_nurse.close()


async def test_the_appservice_killed_while_a_critical_page_waits_escalates_on_time_after_restart(
    stack: RunningStack,
):
    start = tomorrow_at(10, 0)
    await set_clock(stack, start)
    patient = new_patient()
    control, oru = critical_oru(patient, "钱^重启", pv1="PV1|1|I|ICU^04^04")
    assert ack_code(await send_mllp(stack, oru)) == "AA"

    async def nurse_paged() -> bool:
        status, s = await alert_state(stack, "LIS", control)
        return status == 200 and any(p["role"] == "icu/nurse" for p in s["pages"])

    assert await eventually(nurse_paged)
    stack.stack.appservice.kill()
    stack.stack.restart_appservice()
    await eventually(lambda: _health_ok(stack), timeout=90, interval=1)
    await set_clock(stack, start + timedelta(minutes=1))  # before the 2-minute deadline
    await asyncio.sleep(2)
    s = (await alert_state(stack, "LIS", control))[1]
    nurse_page = next(p for p in s["pages"] if p["role"] == "icu/nurse")
    assert nurse_page["step"] == 0 and nurse_page["paged"] == ["刘洋 Liu Yang (N3001)"]
    await set_clock(stack, start + timedelta(minutes=2, seconds=5))

    async def escalated() -> bool:
        s = (await alert_state(stack, "LIS", control))[1]
        page = next(p for p in s["pages"] if p["role"] == "icu/nurse")
        return page["step"] == 1 and "陈静 Chen Jing (D2001)" in page["paged"]

    assert await eventually(escalated)


async def _delivered(stack: RunningStack, control: str) -> dict | None:
    s = (await alert_state(stack, "LIS", control))[1]
    return s if s["status"] == "delivered" else None


async def _health_ok(stack: RunningStack) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(
            stack.deployment.settings.appservice_url + "/_carematrix/health"
        ) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def test_a_critical_observation_whose_encounter_is_unknown_still_reaches_a_human(stack: RunningStack):
    """FHIR: the Observation names an encounter the service never saw and has no requester:
    no ward, no ordering doctor — the LIS's safety-net role (the hospital duty doctor) is paged."""
    await set_clock(stack, tomorrow_at(10, 0))
    patient = new_patient()
    observation = {
        "resourceType": "Observation", "id": f"k-{uuid.uuid4().hex[:8]}", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3", "display": "Potassium"}], "text": "Potassium"},
        "subject": {"reference": f"Patient/{patient}", "display": "孙无病区"},
        "encounter": {"reference": "Encounter/never-seen-here"},
        "effectiveDateTime": "2026-11-25T10:00:00+08:00",
        "valueQuantity": {"value": 7.2, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "HH"}]}],
    }
    headers = {"Content-Type": "application/fhir+json",
               "Authorization": f"Bearer {stack.deployment.secrets['fhir_token:LIS']}"}
    url = f"{stack.deployment.settings.appservice_url}/_carematrix/fhir/Observation"
    async with aiohttp.ClientSession() as http, http.post(url, json=observation, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        alert_path = resp.headers.get("Location", "") + " " + await resp.text()
    found = re.search(r"/_carematrix/alerts/LIS/([^\s\"]+)", alert_path)
    assert found, alert_path
    control = found.group(1)
    status, _ = await alert_state(stack, "LIS", control)
    assert status == 200  # exists from the moment it was stored

    async def routed() -> dict | None:
        s = (await alert_state(stack, "LIS", control))[1]
        return s if s["pages"] and s["status"] == "delivered" else None

    s = await eventually(routed)
    assert "no ward known" in s["routing"] and "administration/duty-doctor" in s["routing"]
    assert s["pages"][0]["role"] == "administration/duty-doctor"
    assert s["pages"][0]["paged"] == ["陈静 Chen Jing (D2001)"]  # the day's hospital duty doctor


async def test_a_ward_role_with_nobody_on_duty_pages_the_fallback_and_says_so(stack: RunningStack):
    # The ICU nurse roster has day shifts only: at 23:00 nobody holds icu/nurse.
    await set_clock(stack, tomorrow_at(23, 0))
    patient = new_patient()
    control, oru = critical_oru(patient, "夜^班", pv1="PV1|1|I|ICU^06^06")
    assert ack_code(await send_mllp(stack, oru)) == "AA"
    nurse = await stack.login("n3001")
    try:
        icu = await team(stack, nurse, "icu")

        async def gap_told() -> bool:
            return any("Nobody is on duty for icu/nurse" in n["content"]["body"] and "fallback" in n["content"]["body"]
                       and n["content"].get("org.carematrix.priority") == "critical" for n in await notices(nurse, icu))

        assert await eventually(gap_told)
        s = await eventually(lambda: _delivered(stack, control))
        nurse_page = next(p for p in s["pages"] if p["role"] == "icu/nurse")
        assert nurse_page["paged"] == ["陈静 Chen Jing (D2001)"]  # the fallback pool icu-senior
    finally:
        await nurse.close()


async def test_synapse_restarted_while_a_page_is_open_the_page_escalates_and_is_acknowledged(stack: RunningStack):
    start = tomorrow_at(10, 0)
    await set_clock(stack, start)
    patient = new_patient()
    control, oru = critical_oru(patient, "孙^重启", pv1="PV1|1|I|ICU^08^08")
    assert ack_code(await send_mllp(stack, oru)) == "AA"

    async def nurse_paged() -> bool:
        s = (await alert_state(stack, "LIS", control))[1]
        return any(p["role"] == "icu/nurse" for p in s["pages"])

    assert await eventually(nurse_paged)
    # Traffic before the crash: the appservice has seen many transactions, which a homeserver
    # on SQLite numbers again from low after a restart (events were dropped as duplicates).
    chatter = await stack.login("n3001")
    try:
        icu = await team(stack, chatter, "icu")
        for i in range(40):
            sent = await chatter.room_send(icu, "m.room.message", {"msgtype": "m.text", "body": f"obs round {i}: stable"})
            assert isinstance(sent, RoomSendResponse)
            await asyncio.sleep(0.05)
    finally:
        await chatter.close()
    log_path = stack.deployment.paths.appservice_log
    log_offset = log_path.stat().st_size
    stack.stack.synapse.kill()
    stack.stack.restart_synapse()
    await set_clock(stack, start + timedelta(minutes=2, seconds=5))

    async def escalated() -> bool:
        s = (await alert_state(stack, "LIS", control))[1]
        page = next(p for p in s["pages"] if p["role"] == "icu/nurse")
        return page["step"] == 1 and "陈静 Chen Jing (D2001)" in page["paged"]

    assert await eventually(escalated, timeout=60)
    doctor = await stack.login("d2001")
    try:
        icu = await team(stack, doctor, "icu")
        alert_id = next(p["alert_id"] for p in (await alert_state(stack, "LIS", control))[1]["pages"] if p["role"] == "icu/nurse")
        sent = await doctor.room_send(icu, "m.room.message", {"msgtype": "m.text", "body": f"!ack {alert_id}"})
        assert isinstance(sent, RoomSendResponse)

        async def acked() -> bool:
            s = (await alert_state(stack, "LIS", control))[1]
            return next(p for p in s["pages"] if p["role"] == "icu/nurse")["state"] == "acked"

        assert await eventually(acked)
    finally:
        await doctor.close()
    # The outage is expected and passes: the upkeep loops say so in a WARNING, not an ERROR
    # with a traceback.
    with log_path.open("rb") as log:
        log.seek(log_offset)
        after = log.read().decode("utf-8", "replace")
    assert "upkeep failed" not in after, after[after.find("upkeep failed") - 200:][:1500]


async def test_a_critical_result_that_jumps_a_backlog_still_finds_the_ward_of_the_admission_queued_before_it(
    stack: RunningStack,
):
    """The HIS sends a burst (here 150 admissions elsewhere), then this patient's admission to
    the ICU, then the lab's critical result without PV1. The result is delivered ahead of the
    backlog; the admission telling its ward must go with it, not after it."""
    await set_clock(stack, tomorrow_at(10, 0))
    patient = new_patient()
    burst = [hl7(f"PID|1||B{patient}{i:03d}^^^RENHE^MR||排^队{i}||19700101|M", "PV1|1|I|5A^01^01")[1] for i in range(150)]
    _, admission = hl7(f"PID|1||{patient}^^^RENHE^MR||急^插队||19600101|F", "PV1|1|I|ICU^09^09")
    control, oru = critical_oru(patient, "急^插队")
    assert await send_many(stack, [*burst, admission, oru]) == ["AA"] * (len(burst) + 2)
    s = await eventually(lambda: _delivered(stack, control), timeout=120, interval=0.5)
    assert s["routing"] == "ward ICU from the patient's last ADT"
    assert {p["role"] for p in s["pages"]} == {"icu/nurse", "icu/doctor"}


async def test_a_critical_result_for_a_patient_the_emr_has_on_a_ward_goes_to_that_ward(stack: RunningStack):
    """P20261101 (王建国) has had no ADT here; the hospital's FHIR server has him in an
    in-progress encounter on 5A. A critical ORU without PV1 pages 5A's on-duty doctor."""
    await set_clock(stack, tomorrow_at(10, 0) + timedelta(days=3))
    control, oru = critical_oru("P20261101", "王^建国")
    assert ack_code(await send_mllp(stack, oru)) == "AA"
    s = await eventually(lambda: _delivered(stack, control))
    assert s["routing"].startswith("ward 5A from the") and ("EMR" in s["routing"] or "ADT" in s["routing"])
    assert [p["role"] for p in s["pages"]] == ["cardiology/attending"]
    assert s["pages"][0]["paged"] == ["李伟 Li Wei (D1001)"]  # the day attending


async def test_a_reaction_on_the_result_itself_acknowledges_only_when_it_names_one_page(stack: RunningStack):
    start = tomorrow_at(10, 0) + timedelta(days=5)
    await set_clock(stack, start)
    patient = new_patient()
    control, oru = critical_oru(patient, "吴^反应", pv1="PV1|1|I|ICU^10^10")
    assert ack_code(await send_mllp(stack, oru)) == "AA"
    doctor = await stack.login("d2001")
    try:
        icu = await team(stack, doctor, "icu")
        assert await eventually(lambda: _delivered(stack, control))
        # The nurse does not answer: her page climbs to the ICU doctor, who now holds two pages
        # for this one result (his own and the nurse's).
        await set_clock(stack, start + timedelta(minutes=2, seconds=10))

        async def doctor_on_both() -> bool:
            s = (await alert_state(stack, "LIS", control))[1]
            return all("陈静 Chen Jing (D2001)" in p["paged"] for p in s["pages"])

        assert await eventually(doctor_on_both)
        post = next(n for n in await notices(doctor, icu)
                    if n["content"]["body"].startswith("危急值 CRITICAL RESULT") and patient in n["content"]["body"])
        sent = await doctor.room_send(icu, "m.reaction", {
            "m.relates_to": {"rel_type": "m.annotation", "event_id": post["event_id"], "key": "👍"}})
        assert isinstance(sent, RoomSendResponse)

        async def told_to_choose() -> bool:
            return any("open pages" in n["content"]["body"] and "nothing was acknowledged" in n["content"]["body"]
                       for n in await notices(doctor, icu))

        assert await eventually(told_to_choose)
        s = (await alert_state(stack, "LIS", control))[1]
        assert all(p["state"] == "open" for p in s["pages"])
    finally:
        await doctor.close()


async def test_after_an_outage_a_critical_result_reaches_the_doctor_before_pages_queued_earlier(stack: RunningStack):
    """Pages pile up while nothing can be sent (the outbox held, as in an outage): three of a
    nurse's pages to the cardiology attending, then a critical potassium for a patient on
    ward 5A, which pages the same role. When sending resumes, the doctor gets the critical
    page first, then the nurse's pages in the order she sent them."""
    await set_clock(stack, tomorrow_at(10, 0))  # D1001 is the attending by day
    nurse = await stack.login("n3002")
    released = False
    try:
        rooms = [await dm_role(stack, nurse, ATTENDING) for _ in range(3)]
        await holds(stack, outbox=True)
        sent = []
        for i, room in enumerate(rooms):
            resp = await nurse.room_send(room, "m.room.message", {
                "msgtype": "m.text", "body": f"Bed {30 + i}: 请回电 please call back", "org.carematrix.priority": "routine",
            })
            assert isinstance(resp, RoomSendResponse), resp
            sent.append(resp.event_id)
        for event_id in sent:
            assert await eventually(lambda event_id=event_id: held(stack, "outbox", event_id))
        patient = new_patient()
        control, oru = critical_oru(patient, "周^排队", pv1="PV1|1|I|5A^07^07")
        assert ack_code(await send_mllp(stack, oru)) == "AA"

        async def critical_paged() -> bool:
            status, s = await alert_state(stack, "LIS", control)
            return status == 200 and any(p["role"] == "cardiology/attending" for p in s["pages"])

        assert await eventually(critical_paged)
        await holds(stack, outbox=False)
        released = True
        ward = await team(stack, nurse, "cardiology-ward-5a")
        doctor = stack.user_id("d1001")

        def to_doctor(notice: dict) -> bool:
            return doctor in notice["content"].get("m.mentions", {}).get("user_ids", [])

        async def doctor_paged(room: str) -> list[dict]:
            return [n for n in await notices(nurse, room) if n["content"].get("org.carematrix.page") and to_doctor(n)]

        # Behind whatever earlier tests left in the outbox at least as urgent as these.
        critical = (await eventually(lambda: page_notices(nurse, ward, patient), timeout=BACKLOG_SECONDS))[0]
        routine = [(await eventually(lambda room=room: doctor_paged(room), timeout=BACKLOG_SECONDS))[0]
                   for room in rooms]
        assert to_doctor(critical) and critical["content"]["org.carematrix.priority"] == "critical"
        times = [critical["origin_server_ts"], *(n["origin_server_ts"] for n in routine)]
        assert times == sorted(times) and len(set(times)) == len(times), times
    finally:
        if not released:
            await holds(stack, outbox=False)
        await nurse.close()
