"""Send-to-receive round trip: a message sent by one user until it shows up in another
user's /sync, through Synapse with the CareMatrix modules and appservice vs. plain Synapse.

Both homeservers run at once from the same Synapse install on SQLite with the same
(raised) rate limits; batches alternate between them so machine noise hits both alike.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.stats import comparison, summary
from carematrix.policy.rooms import ROOM_CLASS_EVENT
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.settings import Deployment, Settings
from carematrix_ops.seed import Seeder, shared_secret_registration
from carematrix_ops.supervisor import Stack
from tests.ports import free_port_pair


@dataclass
class Endpoint:
    name: str
    base: str
    room_id: str
    sender_token: str
    receiver_token: str


async def _call(session: aiohttp.ClientSession, method: str, url: str, token: str | None = None, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(method, url, json=body, headers=headers) as resp:
        data = await resp.json(content_type=None)
        if resp.status >= 400:
            raise RuntimeError(f"{method} {url}: {resp.status} {data}")
        return data


async def _register(session: aiohttp.ClientSession, d: Deployment, localpart: str, password: str) -> str:
    base = d.settings.homeserver_url
    nonce = (await _call(session, "GET", f"{base}/_synapse/admin/v1/register"))["nonce"]
    body = shared_secret_registration(d.secrets["registration_shared_secret"], nonce, localpart, password, False)
    return (await _call(session, "POST", f"{base}/_synapse/admin/v1/register", body=body))["access_token"]


async def _login(session: aiohttp.ClientSession, base: str, localpart: str, password: str) -> str:
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart}, "password": password}
    return (await _call(session, "POST", f"{base}/_matrix/client/v3/login", body=body))["access_token"]


async def plain_endpoint(session: aiohttp.ClientSession, d: Deployment) -> Endpoint:
    base = d.settings.homeserver_url
    sender = await _register(session, d, "bench-sender", "bench-password")
    receiver = await _register(session, d, "bench-receiver", "bench-password")
    room = (await _call(session, "POST", f"{base}/_matrix/client/v3/createRoom", sender, {"preset": "public_chat"}))["room_id"]
    await _call(session, "POST", f"{base}/_matrix/client/v3/join/{room}", receiver, {})
    return Endpoint("plain", base, room, sender, receiver)


async def carematrix_endpoint(session: aiohttp.ClientSession, d: Deployment, name: str) -> Endpoint:
    """A two-member announcement-class room, the same shape as the plain one (the bot that
    made it leaves): every send goes through the room-class check and, with audit on, is on
    record before the client hears back."""
    base = d.settings.homeserver_url
    password = d.secrets["demo_password"]
    bot = d.secrets["as_token"]
    sender = await _login(session, base, "a0001", password)
    receiver = await _login(session, base, "n3001", password)
    body = {
        "preset": "private_chat",
        "invite": [f"@a0001:{d.settings.server_name}", f"@n3001:{d.settings.server_name}"],
        "initial_state": [
            {"type": ROOM_CLASS_EVENT, "state_key": "", "content": {"class": "announcement", "unit": "renhe"}}
        ],
    }
    room = (await _call(session, "POST", f"{base}/_matrix/client/v3/createRoom", bot, body))["room_id"]
    for token in (sender, receiver):
        await _call(session, "POST", f"{base}/_matrix/client/v3/join/{room}", token, {})
    await _call(session, "POST", f"{base}/_matrix/client/v3/rooms/{room}/leave", bot, {})
    return Endpoint(name, base, room, sender, receiver)


class Receiver:
    """Long-polls /sync and timestamps each bench message the moment it arrives."""

    def __init__(self, session: aiohttp.ClientSession, ep: Endpoint) -> None:
        self.session, self.ep = session, ep
        self.arrived: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future] = {}
        self.since: str | None = None

    async def prime(self) -> None:
        data = await _call(self.session, "GET", f"{self.ep.base}/_matrix/client/v3/sync?timeout=0", self.ep.receiver_token)
        self.since = data["next_batch"]

    async def run(self) -> None:
        flt = '{"room":{"timeline":{"limit":50},"state":{"lazy_load_members":true}},"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]}}'
        while True:
            url = f"{self.ep.base}/_matrix/client/v3/sync?timeout=30000&since={self.since}&filter={flt}"
            data = await _call(self.session, "GET", url, self.ep.receiver_token)
            now = time.perf_counter()
            self.since = data["next_batch"]
            room = data.get("rooms", {}).get("join", {}).get(self.ep.room_id, {})
            for event in room.get("timeline", {}).get("events", []):
                tag = event.get("content", {}).get("bench_id")
                if tag and tag in self.waiters and not self.waiters[tag].done():
                    self.waiters[tag].set_result(now)


async def one_round_trip(session: aiohttp.ClientSession, ep: Endpoint, rx: Receiver) -> float:
    tag = uuid.uuid4().hex
    fut = asyncio.get_running_loop().create_future()
    rx.waiters[tag] = fut
    start = time.perf_counter()
    await _call(
        session,
        "PUT",
        f"{ep.base}/_matrix/client/v3/rooms/{ep.room_id}/send/m.room.message/{tag}",
        ep.sender_token,
        {"msgtype": "m.text", "body": f"bench {tag}", "bench_id": tag},
    )
    arrived = await asyncio.wait_for(fut, 60)
    del rx.waiters[tag]
    return (arrived - start) * 1000


async def measure(work: Path, messages: int, warmup: int, batch: int) -> list[dict]:
    """Three servers in one run: plain Synapse, CareMatrix without its audit module, and
    the full CareMatrix stack; returns the two comparisons the issues ask for."""
    plain_d = prepare(Settings(data_dir=work / "plain", port=free_port_pair(), relaxed_rate_limits=True, hl7_port=0, turn_port=0, carematrix_enabled=False))
    noaudit_d = prepare(Settings(data_dir=work / "noaudit", port=free_port_pair(), relaxed_rate_limits=True, hl7_port=0, turn_port=0, audit_enabled=False))
    cm_d = prepare(Settings(data_dir=work / "carematrix", port=free_port_pair(), relaxed_rate_limits=True, hl7_port=0, turn_port=0))
    stacks = [Stack(plain_d), Stack(noaudit_d), Stack(cm_d)]
    try:
        for s in stacks:
            s.start()
        Seeder(noaudit_d).run()
        Seeder(cm_d).run()
        async with aiohttp.ClientSession() as session:
            endpoints = [
                await plain_endpoint(session, plain_d),
                await carematrix_endpoint(session, noaudit_d, "noaudit"),
                await carematrix_endpoint(session, cm_d, "carematrix"),
            ]
            receivers = [Receiver(session, ep) for ep in endpoints]
            for rx in receivers:
                await rx.prime()
            tasks = [asyncio.create_task(rx.run()) for rx in receivers]
            samples: dict[str, list[float]] = {ep.name: [] for ep in endpoints}
            for ep, rx in zip(endpoints, receivers, strict=True):
                for _ in range(warmup):
                    await one_round_trip(session, ep, rx)
            while min(len(v) for v in samples.values()) < messages:
                for ep, rx in zip(endpoints, receivers, strict=True):
                    for _ in range(min(batch, messages - len(samples[ep.name]))):
                        samples[ep.name].append(await one_round_trip(session, ep, rx))
            for t in tasks:
                t.cancel()
    finally:
        for s in stacks:
            s.stop()
    what = f"message round trip (send -> other user's /sync), {messages} messages each, SQLite"
    return [
        comparison(f"{what}: CareMatrix vs plain Synapse", summary(samples["plain"]), summary(samples["carematrix"])),
        comparison(
            f"{what}: audit on vs off", summary(samples["noaudit"]), summary(samples["carematrix"]),
            labels=("audit off", "audit on"),
        ),
    ]
