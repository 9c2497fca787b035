"""A critical lab result under load, end to end: an ORU^R01 with a critical potassium sent over
MLLP until the alert is in the on-duty ICU nurse's /sync, while the HIS keeps sending 50 HL7
messages per second (admissions, updates, routine results, some of them posted in ward
rooms). Compared, in the same run and under the same load, with a colleague's direct message
to the same nurse (plain Synapse delivery). Also in the same run, the results the message
alone cannot route: one without PV1 whose ward comes from the patient's earlier ADT, and one
for a patient with no ward anywhere, which reaches the ordering doctor (the invite into the
alert room, named after the patient, in the doctor's /sync).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from bench.mllp import Mllp, start_hl7_stack
from bench.oncall_e2e import Syncer, _clock
from bench.roundtrip import _call, _login
from bench.stats import comparison, summary
from carematrix_ops.seed import Seeder

TZ = ZoneInfo("Asia/Shanghai")


def _msh(kind: str, facility: str = "HIS") -> str:
    return (f"MSH|^~\\&|APP|{facility}|CAREMATRIX|RENHE|{datetime.now():%Y%m%d%H%M%S}||{kind}|"
            f"{uuid.uuid4().hex[:16]}|P|2.5|||||CHN|UNICODE UTF-8")


def _background(i: int) -> bytes:
    """The HIS's everyday traffic: 1 in 10 an admission (posted in a ward room), the rest
    updates and routine results (stored, routed, not posted)."""
    pid = f"PID|1||BG{i:07d}^^^RENHE^MR||测试^病人{i}||19700101|M"
    ward = ("ICU", "5A")[i % 2]
    if i % 10 == 0:
        segments = [_msh("ADT^A01"), f"EVN|A01|{datetime.now():%Y%m%d%H%M}", pid, f"PV1|1|I|{ward}^{i % 40:02d}^01"]
    elif i % 10 < 6:
        segments = [_msh("ADT^A08"), f"EVN|A08|{datetime.now():%Y%m%d%H%M}", pid, f"PV1|1|I|{ward}^{i % 40:02d}^01"]
    else:
        segments = [_msh("ORU^R01", "LIS"), pid, f"PV1|1|I|{ward}^{i % 40:02d}^01",
                    f"OBR|1|O{i}|L{i}|BMP^Basic metabolic panel|||{datetime.now():%Y%m%d%H%M}",
                    "OBX|1|NM|2951-2^Sodium||140|mmol/L|137-147|N|||F"]
    return ("\r".join(segments) + "\r").encode()


def _critical(patient: str, pv1: bool = True) -> bytes:
    segments = [
        _msh("ORU^R01", "LIS"), f"PID|1||{patient}^^^RENHE^MR||危急^{patient}||19600101|F",
        *(["PV1|1|I|ICU^03^03"] if pv1 else []),
        f"OBR|1|O{patient}|L{patient}|BMP^Basic metabolic panel|||{datetime.now():%Y%m%d%H%M}|||||||||D1001",
        "OBX|1|NM|2823-3^Potassium||6.9|mmol/L|3.5-5.3|HH|||F",
    ]
    return ("\r".join(segments) + "\r").encode()


def _admission(patient: str) -> bytes:
    segments = [_msh("ADT^A01"), f"EVN|A01|{datetime.now():%Y%m%d%H%M}",
                f"PID|1||{patient}^^^RENHE^MR||危急^{patient}||19600101|F", "PV1|1|I|ICU^03^03"]
    return ("\r".join(segments) + "\r").encode()


def _named(patient: str) -> Any:
    return lambda e: e.get("type") == "m.room.name" and patient in str(e.get("content", {}).get("name", ""))


async def _flow(port: int, rate: float, stop: asyncio.Event, sent: list[int]) -> None:
    """``rate`` messages per second, paced against the clock (a slow ACK is caught up)."""
    async with Mllp(port) as conn:
        start = time.perf_counter()
        i = 0
        while not stop.is_set():
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await conn.send(_background(i))
            i += 1
            sent[0] = i


async def measure(work: Path, rounds: int = 40, rate: float = 50.0) -> dict:
    d, stack = start_hl7_stack(work, test_clock=True)
    port = d.settings.hl7_port
    try:
        Seeder(d).run()
        base, pw = d.settings.homeserver_url, d.secrets["demo_password"]
        server = d.settings.server_name
        async with aiohttp.ClientSession() as s:
            day = datetime.now(TZ).date() + timedelta(days=1)
            await _clock(s, d.settings.appservice_url, d.secrets["as_token"],
                         datetime.combine(day, datetime.min.time(), TZ).replace(hour=10))
            nurse = await _login(s, base, "n3001", pw)
            orderer = await _login(s, base, "d1001", pw)
            colleague = await _login(s, base, "d2001", pw)
            icu = (await _call(s, "GET", f"{base}/_matrix/client/v3/directory/room/%23icu-team%3A{server}", nurse))["room_id"]
            direct = (await _call(s, "POST", f"{base}/_matrix/client/v3/createRoom", colleague,
                                  {"invite": [f"@n3001:{server}"], "is_direct": True}))["room_id"]
            await _call(s, "POST", f"{base}/_matrix/client/v3/join/{direct}", nurse, {})
            syncer = Syncer(s, base, nurse)
            await syncer.prime()
            doctor_sync = Syncer(s, base, orderer)
            await doctor_sync.prime()
            stop, sent = asyncio.Event(), [0]
            # The critical results (about 1 per 1.5 s) are part of the 50/s.
            flow = asyncio.create_task(_flow(port, rate - 0.7, stop, sent))
            await asyncio.sleep(5)  # the load is flowing before the first measurement
            alert_ms: list[float] = []
            direct_ms: list[float] = []
            adt_ms: list[float] = []
            no_ward_ms: list[float] = []
            t_start = time.perf_counter()
            async with Mllp(port) as lis:
                for _ in range(rounds):
                    patient = f"CR{uuid.uuid4().hex[:8].upper()}"
                    t0 = time.perf_counter()
                    await lis.send(_critical(patient))
                    seen = await syncer.wait_for(icu, lambda e, p=patient: p in str(e.get("content", {}).get("body", ""))
                                                 and e["content"].get("org.carematrix.priority") == "critical")
                    alert_ms.append((seen - t0) * 1000)
                    marker = uuid.uuid4().hex
                    t0 = time.perf_counter()
                    await _call(s, "PUT", f"{base}/_matrix/client/v3/rooms/{direct}/send/m.room.message/{marker}",
                                colleague, {"msgtype": "m.text", "body": f"K+ recheck please {marker}"})
                    seen = await syncer.wait_for(direct, lambda e, m=marker: m in str(e.get("content", {}).get("body", "")))
                    direct_ms.append((seen - t0) * 1000)
                    # No PV1: the ward from the patient's admission, sent a moment before.
                    patient = f"CA{uuid.uuid4().hex[:8].upper()}"
                    await lis.send(_admission(patient))
                    await asyncio.sleep(0.2)
                    t0 = time.perf_counter()
                    await lis.send(_critical(patient, pv1=False))
                    seen = await syncer.wait_for(icu, lambda e, p=patient: p in str(e.get("content", {}).get("body", ""))
                                                 and e["content"].get("org.carematrix.priority") == "critical")
                    adt_ms.append((seen - t0) * 1000)
                    # No ward anywhere: the ordering doctor is invited into the alert room.
                    patient = f"CN{uuid.uuid4().hex[:8].upper()}"
                    t0 = time.perf_counter()
                    await lis.send(_critical(patient, pv1=False))
                    seen = await doctor_sync.wait_for_anywhere(_named(patient))
                    no_ward_ms.append((seen - t0) * 1000)
                    await asyncio.sleep(0.5)
            elapsed = time.perf_counter() - t_start
            stop.set()
            await flow
        result = comparison(
            f"critical HL7 result -> on-duty nurse's /sync, under {rate:.0f} HL7 msg/s",
            summary(direct_ms), summary(alert_ms), ("direct message", "critical alert"),
        )
        result["background_messages_per_s"] = round(sent[0] / (elapsed + 5), 1)
        result["fallbacks"] = {
            "ward from the patient's ADT (no PV1)": summary(adt_ms),
            "no ward: ordering doctor invited into the alert room": summary(no_ward_ms),
        }
        return result
    finally:
        stack.stop()
