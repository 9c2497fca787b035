"""Nurse call: a bed button's press (``POST /_carematrix/devices/<id>/call``) until the ICU
nurse on duty sees the page in her own /sync, against a colleague's plain message in the same
team room reaching the same /sync, measured in the same run on one CareMatrix stack.

Each round the nurse acknowledges the page (a reply), so the next press is a new call rather
than a repeat within the window."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import aiohttp

from bench.oncall_e2e import TZ, Syncer, _clock, _mentions
from bench.roundtrip import _call, _login
from bench.stats import comparison, summary
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.settings import Settings
from carematrix_ops.seed import Seeder
from carematrix_ops.supervisor import Stack
from tests.ports import free_port_pair

DEVICE = "icu-bed-03"


async def measure(work: Path, rounds: int = 40, warmup: int = 3) -> dict:
    d = prepare(Settings(data_dir=work / "carematrix", port=free_port_pair(), relaxed_rate_limits=True, hl7_port=0,
                         turn_port=0, test_clock=True))
    stack = Stack(d)
    stack.start()
    try:
        Seeder(d).run()
        base, pw, as_url, as_token = d.settings.homeserver_url, d.secrets["demo_password"], d.settings.appservice_url, d.secrets["as_token"]
        server = d.settings.server_name
        press_url = f"{as_url}/_carematrix/devices/{DEVICE}/call"
        device_auth = {"Authorization": f"Bearer {d.secrets['device_token:' + DEVICE]}"}
        day = datetime.now(TZ).date() + timedelta(days=1)
        async with aiohttp.ClientSession() as s:
            nurse = await _login(s, base, "n3001", pw)  # ICU nurse in charge 08:00-20:00
            colleague = await _login(s, base, "d2001", pw)
            await _clock(s, as_url, as_token, datetime.combine(day, datetime.min.time(), TZ).replace(hour=10))
            room = (await _call(s, "GET", f"{base}/_matrix/client/v3/directory/room/{quote(f'#icu-team:{server}')}", nurse))["room_id"]
            sync = Syncer(s, base, nurse)
            await sync.prime()
            pressed, plain = [], []
            for i in range(warmup + rounds):
                tag = uuid.uuid4().hex[:8]
                start = time.perf_counter()
                await _call(s, "PUT", f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/{tag}", colleague,
                            {"msgtype": "m.text", "body": f"plain {tag}"})
                arrived = await sync.wait_for(room, lambda e, t=tag: e.get("content", {}).get("body") == f"plain {t}")
                if i >= warmup:
                    plain.append((arrived - start) * 1000)
                start = time.perf_counter()
                async with s.post(press_url, json={"kind": "assist"}, headers=device_auth) as r:
                    assert r.status == 201, await r.text()
                arrived = await sync.wait_for(room, _mentions(f"@n3001:{server}"))
                if i >= warmup:
                    pressed.append((arrived - start) * 1000)
                page = sync.matched
                assert page is not None
                await _call(s, "PUT", f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/{tag}a", nurse, {
                    "msgtype": "m.text", "body": "on my way",
                    "m.relates_to": {"m.in_reply_to": {"event_id": page["event_id"]}},
                })
                # Until the device reads the call as acknowledged: the next press is a new call.
                for _ in range(100):
                    async with s.get(press_url, headers=device_auth) as r:
                        if (await r.json()).get("acknowledged"):
                            break
                    await asyncio.sleep(0.05)
            return comparison(
                "nurse-call press vs a plain message in the same team room (until it is in the on-duty nurse's /sync)",
                summary(plain), summary(pressed), ("plain message", "device press"),
            )
    finally:
        stack.stop()
