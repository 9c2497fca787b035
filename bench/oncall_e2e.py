"""On-duty paging end to end, on one CareMatrix stack with a movable on-call clock:

* page latency: a nurse's message to "Cardiology – attending on duty" until the doctor on
  duty sees the page in their own /sync, against the same nurse messaging the same doctor
  directly (plain Synapse delivery) in the same run;
* escalation lag: from a step's deadline until the next person's page reaches the sender's
  /sync.
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

from bench.roundtrip import _call, _login
from bench.stats import comparison, summary
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.settings import Settings
from carematrix_ops.seed import Seeder
from carematrix_ops.supervisor import Stack
from tests.ports import free_port_pair

TZ = ZoneInfo("Asia/Shanghai")


class Syncer:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session, self.base, self.token = session, base, token
        self.since: str | None = None
        self.matched: dict | None = None  # the event the last wait matched

    async def prime(self) -> None:
        self.since = (await _call(self.session, "GET", f"{self.base}/_matrix/client/v3/sync?timeout=0", self.token))["next_batch"]

    async def wait_for(self, room: str, match: Any, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = await _call(self.session, "GET", f"{self.base}/_matrix/client/v3/sync?timeout=5000&since={self.since}", self.token)
            now = time.perf_counter()
            self.since = data["next_batch"]
            rooms = data.get("rooms", {})
            for section in ("join", "invite"):
                r = rooms.get(section, {}).get(room, {})
                events = r.get("timeline", {}).get("events", []) + r.get("invite_state", {}).get("events", [])
                self.matched = next((e for e in events if match(e)), None)
                if self.matched is not None:
                    return now
        raise TimeoutError(f"nothing matching in {room}")

    async def wait_for_anywhere(self, match: Any, timeout: float = 30) -> float:
        """Like wait_for, in any room (a room the service opens for the event, say)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = await _call(self.session, "GET", f"{self.base}/_matrix/client/v3/sync?timeout=5000&since={self.since}", self.token)
            now = time.perf_counter()
            self.since = data["next_batch"]
            for section in ("join", "invite"):
                for r in data.get("rooms", {}).get(section, {}).values():
                    events = r.get("timeline", {}).get("events", []) + r.get("invite_state", {}).get("events", [])
                    self.matched = next((e for e in events if match(e)), None)
                    if self.matched is not None:
                        return now
        raise TimeoutError("nothing matching in any room")


async def _clock(session: aiohttp.ClientSession, url: str, token: str, at: datetime) -> None:
    async with session.post(url + "/_carematrix/test/clock", json={"now": at.isoformat()}, headers={"Authorization": f"Bearer {token}"}) as r:
        r.raise_for_status()


def _mentions(user: str) -> Any:
    return lambda e: user in e.get("content", {}).get("m.mentions", {}).get("user_ids", []) and e.get("content", {}).get("org.carematrix.page")


async def measure(work: Path, rounds: int = 30, escalations: int = 8) -> dict:
    d = prepare(Settings(data_dir=work / "carematrix", port=free_port_pair(), relaxed_rate_limits=True, hl7_port=0, turn_port=0, test_clock=True))
    stack = Stack(d)
    stack.start()
    try:
        Seeder(d).run()
        base, pw, as_url, as_token = d.settings.homeserver_url, d.secrets["demo_password"], d.settings.appservice_url, d.secrets["as_token"]
        server = d.settings.server_name
        role = f"@role-cardiology-attending:{server}"
        day = datetime.now(TZ).date() + timedelta(days=1)
        async with aiohttp.ClientSession() as s:
            nurse = await _login(s, base, "n3002", pw)
            doctor = await _login(s, base, "d1001", pw)
            chief_sync = Syncer(s, base, doctor)
            await _clock(s, as_url, as_token, datetime.combine(day, datetime.min.time(), TZ).replace(hour=10))
            room = (await _call(s, "POST", f"{base}/_matrix/client/v3/createRoom", nurse, {"invite": [role], "is_direct": True}))["room_id"]
            direct = (await _call(s, "POST", f"{base}/_matrix/client/v3/createRoom", nurse, {"invite": [f"@d1001:{server}"], "is_direct": True}))["room_id"]
            await _call(s, "POST", f"{base}/_matrix/client/v3/join/{direct}", doctor, {})
            await asyncio.sleep(2)  # the role account joins
            await chief_sync.prime()
            # Warm-up page: the doctor is brought in (an invite), joins and acknowledges.
            await _call(s, "PUT", f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/warm", nurse, {"msgtype": "m.text", "body": "warm-up"})
            await chief_sync.wait_for(room, lambda e: e.get("type") == "m.room.member")
            await _call(s, "POST", f"{base}/_matrix/client/v3/join/{room}", doctor, {})
            await _call(s, "PUT", f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/warmack", doctor, {"msgtype": "m.text", "body": "here"})
            await asyncio.sleep(1)
            paged, plain = [], []
            for _ in range(rounds):
                tag = uuid.uuid4().hex[:8]
                start = time.perf_counter()
                await _call(s, "PUT", f"{base}/_matrix/client/v3/rooms/{direct}/send/m.room.message/{tag}d", nurse, {"msgtype": "m.text", "body": f"direct {tag}"})
                arrived = await chief_sync.wait_for(direct, lambda e, t=tag: e.get("content", {}).get("body") == f"direct {t}")
                plain.append((arrived - start) * 1000)
                start = time.perf_counter()
                await _call(s, "PUT", f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/{tag}p", nurse, {"msgtype": "m.text", "body": f"page {tag}"})
                arrived = await chief_sync.wait_for(room, _mentions(f"@d1001:{server}"))
                paged.append((arrived - start) * 1000)
                await _call(s, "PUT", f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/{tag}a", doctor, {"msgtype": "m.text", "body": "on my way"})
                await asyncio.sleep(0.3)  # the acknowledgement closes the page
            latency = comparison("message to an on-duty role vs the same doctor directly (until it is in the doctor's /sync)", summary(plain), summary(paged), ("direct message", "role page"))

            nurse_sync = Syncer(s, base, nurse)
            lags = []
            for i in range(escalations):
                t0 = datetime.combine(day, datetime.min.time(), TZ).replace(hour=2, minute=i * 6)
                await _clock(s, as_url, as_token, t0)
                set_at = time.perf_counter()
                r = (await _call(s, "POST", f"{base}/_matrix/client/v3/createRoom", nurse, {"invite": [role], "is_direct": True}))["room_id"]
                await asyncio.sleep(1.5)
                await nurse_sync.prime()
                await _call(s, "PUT", f"{base}/_matrix/client/v3/rooms/{r}/send/m.room.message/e{i}", nurse, {"msgtype": "m.text", "body": "escalation drill"})
                # The page opens just after the send returns; taking the send's return as its
                # opening time puts the estimated deadline early, so the lag is overstated.
                opened = t0 + timedelta(seconds=time.perf_counter() - set_at)
                await nurse_sync.wait_for(r, _mentions(f"@d1002:{server}"))
                # Put the step deadline (5 min after the page) one real second ahead.
                await _clock(s, as_url, as_token, opened + timedelta(minutes=5) - timedelta(seconds=1))
                due = time.perf_counter() + 1.0
                seen = await nurse_sync.wait_for(r, _mentions(f"@d1001:{server}"))
                lags.append(max(0.0, (seen - due) * 1000))
            return {"latency": latency, "escalation_lag": summary(lags)}
    finally:
        stack.stop()
