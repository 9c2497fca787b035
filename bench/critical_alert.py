"""A critical lab result under load, end to end: an ORU^R01 with a critical potassium sent over
MLLP until the alert is in the first clinician's /sync, while the HIS keeps sending 50 HL7
messages per second (admissions, updates, routine results, some of them posted in ward
rooms). The LIS sends a critical result every 1.5 s, each path below in turn. Compared, in
the same run and under the same load, with a colleague's direct message to the same nurse
(plain Synapse delivery).

Also in the same run, every way the routing fallbacks reach someone:

* no PV1, the ward from the patient's admission queued a moment before (ICU nurse);
* no PV1 and no ADT, the ward from the EMR's current encounter (the demo EMR, a FHIR server
  in its own process, has P20261101 on 5A; 5A's head nurse sees the result in her ward room);
* no ward anywhere, the ordering doctor paged: one who has joined the service's direct chat
  (he had a report-ready notice there before the run, as doctors who order tests do), and
  one who never had one (the invite into the alert room, named after the patient, is the
  first thing she sees).

Where the time goes is reported beside the figures: the appservice logs each critical
result's steps (appservice.timing), read back from its log per path, and for messages in
rooms the clinician is in, the part after the homeserver stored the event (delivery to
/sync).
"""

from __future__ import annotations

import asyncio
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from bench.mllp import Mllp, send_paced, start_hl7_stack
from bench.oncall_e2e import Syncer, _clock
from bench.roundtrip import _call, _login
from bench.stats import comparison, summary
from carematrix_ops.demo import DEMO_DATA, DEMO_PATIENT
from carematrix_ops.seed import Seeder
from tests.clinical_support import report_ready
from tests.ports import free_port

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


def _critical(patient: str, pv1: bool = True, orderer: str = "D1001", name: str = "") -> bytes:
    segments = [
        _msh("ORU^R01", "LIS"), f"PID|1||{patient}^^^RENHE^MR||{name or '危急^' + patient}||19600101|F",
        *(["PV1|1|I|ICU^03^03"] if pv1 else []),
        f"OBR|1|O{patient}|L{patient}|BMP^Basic metabolic panel|||{datetime.now():%Y%m%d%H%M}|||||||||{orderer}",
        "OBX|1|NM|2823-3^Potassium||6.9|mmol/L|3.5-5.3|HH|||F",
    ]
    return ("\r".join(segments) + "\r").encode()


def _admission(patient: str) -> bytes:
    segments = [_msh("ADT^A01"), f"EVN|A01|{datetime.now():%Y%m%d%H%M}",
                f"PID|1||{patient}^^^RENHE^MR||危急^{patient}||19600101|F", "PV1|1|I|ICU^03^03"]
    return ("\r".join(segments) + "\r").encode()


def _control_id(payload: bytes) -> str:
    return payload.split(b"\r", 1)[0].split(b"|")[9].decode()


def _delivery_ms(event: dict | None, seen: float, clock: float) -> float | None:
    """From the homeserver storing the event (its timestamp) to the /sync that carried it."""
    ts = (event or {}).get("origin_server_ts")
    return None if ts is None else (seen + clock) * 1000 - ts


_STEP = re.compile(r"^(.*?) (?:(\d+) )?@(-?\d+)$")


def _steps(log: Path, paths: dict[str, list[str]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per path, per step: median and worst duration, median start offset (ms from the
    message's arrival), over the samples of that path, from the appservice's timing lines."""
    lines: dict[str, str] = {}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if "alert steps " in line:
            label, _, rest = line.split("alert steps ", 1)[1].partition(": ")
            lines[label.split("/", 1)[1]] = rest
    out: dict[str, dict[str, dict[str, float]]] = {}
    for path, ids in paths.items():
        took: dict[str, list[float]] = {}
        at: dict[str, list[float]] = {}
        for control_id in ids:
            rest = lines.get(control_id)
            if rest is None:
                continue
            sample: dict[str, float] = {}
            for part in rest.split(" | ")[1:]:
                m = _STEP.match(part.strip())
                if m is None:
                    continue
                name, duration, offset = m.group(1), m.group(2), float(m.group(3))
                if name not in sample:
                    at.setdefault(name, []).append(offset)
                sample[name] = sample.get(name, 0.0) + (float(duration) if duration is not None else 0.0)
            total = rest.split(" | ", 1)[0].removeprefix("total ").removesuffix(" ms")
            sample["total"] = float(total)
            at.setdefault("total", []).append(0.0)
            for name, value in sample.items():
                took.setdefault(name, []).append(value)
        out[path] = {
            name: {"n": len(values), "p50_ms": round(statistics.median(values)), "max_ms": round(max(values)),
                   "p50_at_ms": round(statistics.median(at[name]))}
            for name, values in sorted(took.items(), key=lambda kv: statistics.median(at[kv[0]]))
        }
    return out


def format_steps(steps: dict[str, dict[str, dict[str, float]]]) -> str:
    rows = []
    for path, named in steps.items():
        rows.append(f"  where the time goes, {path} (ms: p50 / worst duration, p50 start):")
        rows += [f"    {name:<44}{v['p50_ms']:>6} /{v['max_ms']:>6}   @{v['p50_at_ms']:>5}" for name, v in named.items()]
    return "\n".join(rows)


def _about(patient: str) -> Any:
    """The first thing naming the patient: a message (a page in a chat the doctor is in) or
    the name of a room the doctor is invited to (the alert room)."""
    return lambda e: patient in str(e.get("content", {}).get("body", "")) or (
        e.get("type") == "m.room.name" and patient in str(e.get("content", {}).get("name", "")))


def _critical_post(token: str) -> Any:
    return lambda e: token in str(e.get("content", {}).get("body", "")) and (
        e.get("content", {}).get("org.carematrix.priority") == "critical")


def _start_emr(port: int) -> subprocess.Popen:
    """The demo EMR in its own process, as a hospital's FHIR server would be."""
    emr = subprocess.Popen(
        [sys.executable, "-m", "carematrix_ops.demo.emr", "--port", str(port), "--data", str(DEMO_DATA)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return emr
        except OSError:
            time.sleep(0.2)
    emr.kill()
    raise RuntimeError("the demo EMR did not start")


async def _join_direct_chat(s: aiohttp.ClientSession, base: str, token: str, timeout: float = 60) -> str:
    """Accept the service's direct chat, as the doctor does when the report notice arrives."""
    since = (await _call(s, "GET", f"{base}/_matrix/client/v3/sync?timeout=0", token))["next_batch"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = await _call(s, "GET", f"{base}/_matrix/client/v3/sync?timeout=5000&since={since}", token)
        since = data["next_batch"]
        for room_id in data.get("rooms", {}).get("invite", {}):
            await _call(s, "POST", f"{base}/_matrix/client/v3/join/{room_id}", token, {})
            return room_id
    raise TimeoutError("no direct chat from the service")


async def measure(work: Path, rounds: int = 40, rate: float = 50.0, spacing: float = 1.5) -> dict:
    """``spacing``: seconds from one critical result to the next (a result waits longer if the
    one before has not reached its clinician yet). Far more often than a hospital sees them;
    sent faster than the service can page, they would measure a queue of pages, not routing."""
    emr_port = free_port()
    emr = _start_emr(emr_port)
    d, stack = start_hl7_stack(work, test_clock=True, fhir_server=f"http://127.0.0.1:{emr_port}/fhir")
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
            ward_5a_nurse = await _login(s, base, "n3002", pw)
            orderer = await _login(s, base, "d1001", pw)  # has the service's direct chat
            new_orderer = await _login(s, base, "d1002", pw)  # never had one
            colleague = await _login(s, base, "d2001", pw)
            icu = (await _call(s, "GET", f"{base}/_matrix/client/v3/directory/room/%23icu-team%3A{server}", nurse))["room_id"]
            ward_5a = (await _call(s, "GET", f"{base}/_matrix/client/v3/directory/room/"
                                   f"%23cardiology-ward-5a-team%3A{server}", ward_5a_nurse))["room_id"]
            direct = (await _call(s, "POST", f"{base}/_matrix/client/v3/createRoom", colleague,
                                  {"invite": [f"@n3001:{server}"], "is_direct": True}))["room_id"]
            await _call(s, "POST", f"{base}/_matrix/client/v3/join/{direct}", nurse, {})
            joining = asyncio.create_task(_join_direct_chat(s, base, orderer))
            await asyncio.sleep(0.5)
            # A report for a test he ordered: the service tells him in its direct chat with him.
            await report_ready(d, "D1001", f"RP{uuid.uuid4().hex[:6].upper()}")
            await joining
            syncer = Syncer(s, base, nurse)
            await syncer.prime()
            ward_5a_sync = Syncer(s, base, ward_5a_nurse)
            await ward_5a_sync.prime()
            doctor_sync = Syncer(s, base, orderer)
            await doctor_sync.prime()
            new_doctor_sync = Syncer(s, base, new_orderer)
            await new_doctor_sync.prime()
            stop = asyncio.Event()
            # The measured messages (about one per second) are part of the 50/s.
            flow = asyncio.create_task(send_paced(port, rate - 1.0, stop, _background))
            await asyncio.sleep(5)  # the load is flowing before the first measurement
            paths = ("critical alert", "ward from ADT", "ward from EMR", "no ward, doctor in direct chat",
                     "no ward, doctor without one")
            took: dict[str, list[float]] = {p: [] for p in ("direct message", *paths)}
            ids: dict[str, list[str]] = {p: [] for p in paths}
            after_store: dict[str, list[float | None]] = {p: [] for p in ("direct message", *paths[:3])}
            clock = time.time() - time.perf_counter()  # wall clock = perf_counter + clock

            last_critical = [0.0]

            async def pace(ahead: float = 0.0) -> None:
                """Until ``ahead`` seconds before the next critical result is due."""
                await asyncio.sleep(max(0.0, last_critical[0] + spacing - ahead - time.perf_counter()))

            async def measured(path: str, message: bytes, sync: Syncer, match: Any, room: str | None) -> None:
                ids[path].append(_control_id(message))
                await pace()
                t0 = last_critical[0] = time.perf_counter()
                await lis.send(message)
                seen = await (sync.wait_for(room, match) if room else sync.wait_for_anywhere(match))
                took[path].append((seen - t0) * 1000)
                if path in after_store:
                    after_store[path].append(_delivery_ms(sync.matched, seen, clock))

            t_start = time.perf_counter()
            async with Mllp(port) as lis:
                for _ in range(rounds):
                    patient = f"CR{uuid.uuid4().hex[:8].upper()}"
                    await measured("critical alert", _critical(patient), syncer, _critical_post(patient), icu)
                    marker = uuid.uuid4().hex
                    t0 = time.perf_counter()
                    await _call(s, "PUT", f"{base}/_matrix/client/v3/rooms/{direct}/send/m.room.message/{marker}",
                                colleague, {"msgtype": "m.text", "body": f"K+ recheck please {marker}"})
                    seen = await syncer.wait_for(direct, lambda e, m=marker: m in str(e.get("content", {}).get("body", "")))
                    took["direct message"].append((seen - t0) * 1000)
                    after_store["direct message"].append(_delivery_ms(syncer.matched, seen, clock))
                    # No PV1: the ward from the patient's admission, sent a moment before.
                    patient = f"CA{uuid.uuid4().hex[:8].upper()}"
                    await pace(ahead=0.2)
                    await lis.send(_admission(patient))
                    await asyncio.sleep(0.2)
                    await measured("ward from ADT", _critical(patient, pv1=False), syncer, _critical_post(patient), icu)
                    # No PV1, no ADT: the EMR has the patient on 5A (the name marks this result).
                    token = f"EMR{uuid.uuid4().hex[:6].upper()}"
                    await measured("ward from EMR", _critical(DEMO_PATIENT, pv1=False, name=f"王^{token}"),
                                   ward_5a_sync, _critical_post(token), ward_5a)
                    # No ward anywhere: the ordering doctor.
                    patient = f"CN{uuid.uuid4().hex[:8].upper()}"
                    await measured("no ward, doctor in direct chat", _critical(patient, pv1=False), doctor_sync,
                                   _about(patient), None)
                    patient = f"CM{uuid.uuid4().hex[:8].upper()}"
                    await measured("no ward, doctor without one", _critical(patient, pv1=False, orderer="D1002"),
                                   new_doctor_sync, _about(patient), None)
            elapsed = time.perf_counter() - t_start
            stop.set()
            sent = await flow
        result = comparison(
            f"critical HL7 result -> on-duty nurse's /sync, under {rate:.0f} HL7 msg/s",
            summary(took["direct message"]), summary(took["critical alert"]), ("direct message", "critical alert"),
        )
        result["background_messages_per_s"] = round(sent / (elapsed + 5), 1)
        result["fallbacks"] = {
            "ward from the patient's queued ADT (no PV1): ICU nurse": summary(took["ward from ADT"]),
            "ward from the EMR's encounter (no PV1, no ADT): 5A nurse": summary(took["ward from EMR"]),
            "no ward: ordering doctor, in their direct chat with the service": summary(took["no ward, doctor in direct chat"]),
            "no ward: ordering doctor without one, invited into the alert room": summary(took["no ward, doctor without one"]),
        }
        result["stored_to_sync"] = {k: summary([v for v in vs if v is not None]) for k, vs in after_store.items()}
        await asyncio.sleep(2)  # the last deliveries' timing lines are written
        result["steps"] = _steps(d.paths.appservice_log, ids)
        return result
    finally:
        stack.stop()
        emr.terminate()
        emr.wait(10)
