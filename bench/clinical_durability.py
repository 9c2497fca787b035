"""Exactly-once delivery across a crash: the HIS sends N admissions (default 10,000) over
four MLLP connections; each is acknowledged (AA) only once stored. Right after the last ACK,
with most of them still queued, the appservice is killed with SIGKILL and started again. When
the queue is empty, every admission notice in the two ward rooms is counted: each message
must appear exactly once (none lost, none twice).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp

from bench.mllp import Mllp, start_hl7_stack
from bench.roundtrip import _call, _login
from carematrix_ops.seed import Seeder

WARDS = (("ICU", "icu"), ("5A", "cardiology-ward-5a"))


def _admission(batch: str, i: int) -> bytes:
    ward = WARDS[i % 2][0]
    return (
        f"MSH|^~\\&|HIS-APP|HIS|CAREMATRIX|RENHE|20261125100000||ADT^A01|{batch}-{i}|P|2.5|||||CHN|UNICODE UTF-8\r"
        f"EVN|A01|202611251000\r"
        f"PID|1||{batch}{i:06d}^^^RENHE^MR||测试^病人||19700101|M\r"
        f"PV1|1|I|{ward}^{i % 40:02d}^01\r"
    ).encode()


async def _send(port: int, batch: str, indexes: range) -> None:
    async with Mllp(port) as conn:
        for i in indexes:
            await conn.send(_admission(batch, i))


async def _counts(s: aiohttp.ClientSession, url: str) -> dict:
    async with s.get(url + "/_carematrix/health") as resp:
        return (await resp.json()).get("hl7", {})


async def _notices(s: aiohttp.ClientSession, base: str, token: str, room: str, batch: str) -> Counter:
    """How often each patient of this batch was announced in the room."""
    seen: Counter = Counter()
    end = None
    while True:
        path = f"{base}/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1000" + (f"&from={end}" if end else "")
        page = await _call(s, "GET", path, token)
        for event in page.get("chunk", []):
            body = str(event.get("content", {}).get("body", ""))
            if body.startswith("Admission:") and batch in body:
                seen[body.split("(", 1)[1].split(")", 1)[0]] += 1
        end = page.get("end")
        if not end or not page.get("chunk"):
            return seen


async def measure(work: Path, queued: int = 10_000) -> dict:
    d, stack = start_hl7_stack(work)
    port = d.settings.hl7_port
    try:
        Seeder(d).run()
        base, as_url = d.settings.homeserver_url, d.settings.appservice_url
        batch = "X" + uuid.uuid4().hex[:5].upper()
        t0 = time.perf_counter()
        per = queued // 4
        await asyncio.gather(*(_send(port, batch, range(c * per, (c + 1) * per if c < 3 else queued)) for c in range(4)))
        accept_s = time.perf_counter() - t0
        async with aiohttp.ClientSession() as s:
            at_kill = await _counts(s, as_url)
            stack.appservice.kill()
            t_restart = time.perf_counter()
            stack.restart_appservice()
            while (await _counts(s, as_url)).get("pending", 0) > 0:
                await asyncio.sleep(2)
            drain_s = time.perf_counter() - t_restart
            after = await _counts(s, as_url)
            pw = d.secrets["demo_password"]
            readers = {"icu": await _login(s, base, "n3001", pw), "cardiology-ward-5a": await _login(s, base, "n3002", pw)}
            seen: Counter = Counter()
            for _, unit in WARDS:
                token = readers[unit]
                room = (await _call(s, "GET", f"{base}/_matrix/client/v3/directory/room/%23{unit}-team%3A{d.settings.server_name}", token))["room_id"]
                seen += await _notices(s, base, token, room, batch)
        expected = {f"{batch}{i:06d}" for i in range(queued)}
        return {
            "accepted": queued,
            "accept_messages_per_s": round(queued / accept_s, 1),
            "pending_at_kill": at_kill.get("pending", 0),
            "delivered_at_kill": at_kill.get("delivered", 0),
            "drain_after_restart_s": round(drain_s, 1),
            "delivered_per_s_after_restart": round(at_kill.get("pending", 0) / drain_s, 1) if drain_s else None,
            "inbox_after": after,
            "posted_once": sum(1 for p in expected if seen[p] == 1),
            "missing": sum(1 for p in expected if seen[p] == 0),
            "duplicated": sum(1 for p in expected if seen[p] > 1),
        }
    finally:
        stack.stop()


def format_result(r: dict) -> str:
    return (
        f"kill -9 with {r['pending_at_kill']} of {r['accepted']} acknowledged admissions still queued "
        f"(intake {r['accept_messages_per_s']} msg/s): after restart {r['posted_once']} posted exactly once, "
        f"{r['missing']} missing, {r['duplicated']} duplicated; queue drained in {r['drain_after_restart_s']} s "
        f"({r['delivered_per_s_after_restart']} msg/s)"
    )
