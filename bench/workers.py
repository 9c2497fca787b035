"""One Synapse process vs the worker deployment (``carematrix up --workers``), both CareMatrix
on PostgreSQL, started side by side and measured in the same run:

* message round trip: a message sent by one user until it shows up in another user's /sync
  (batches alternate between the two deployments so machine noise hits both alike);
* concurrent senders: many clients sending at once into one room; throughput and the p99
  of a send's latency;
* a critical HL7 result (ORU^R01 with a critical potassium over MLLP) until the alert is in
  the ICU nurse's /sync, beside a colleague's direct message to her (plain delivery), rounds
  alternating between the two deployments;
* org sync of a synthetic hospital (``--orgsync-staff`` / ``--orgsync-units``) from nothing
  and again with nothing changed, each deployment alone on the machine (one after the
  other), with the rooms and events each event persister wrote.

On a machine with few cores workers add processes competing for the same cores; what they
buy is room to grow with cores (docs/scale.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp

from bench import org_sync
from bench.critical_alert import TZ, _critical, _critical_post
from bench.mllp import Mllp
from bench.oncall_e2e import Syncer, _clock
from bench.roundtrip import Receiver, _call, _login, carematrix_endpoint, one_round_trip
from bench.stats import comparison, summary
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.settings import Deployment, Settings
from carematrix_ops.pgadmin import database_url
from carematrix_ops.seed import Seeder
from carematrix_ops.supervisor import Stack
from tests.ports import TEST_SERVER_URL, free_port, free_port_pair
from tests.support import drop_pg_databases

SENDERS = ("a0001", "a0002", "d1001", "d1002", "d2001", "n3001", "n3002", "l4001", "p5001")


def _deployment(work: Path, name: str, dbname: str, workers: bool) -> Deployment:
    return prepare(Settings(
        data_dir=work / name, port=free_port_pair(), relaxed_rate_limits=True, hl7_port=free_port(), turn_port=0,
        database="postgres", db_url=database_url(TEST_SERVER_URL, dbname), workers=workers, test_clock=True,
    ))


async def _concurrent(session: aiohttp.ClientSession, d: Deployment, senders: int, each: int) -> dict:
    """``senders`` clients (separate logins of the demo staff, so the proxy spreads them over
    the client workers) each sending ``each`` messages into one room as fast as answers come
    back."""
    base, password, server = d.settings.homeserver_url, d.secrets["demo_password"], d.settings.server_name
    owner = await _login(session, base, SENDERS[0], password)
    body = {"name": "bench load", "preset": "private_chat", "invite": [f"@{p}:{server}" for p in SENDERS[1:]]}
    room = (await _call(session, "POST", f"{base}/_matrix/client/v3/createRoom", owner, body))["room_id"]
    tokens = [await _login(session, base, SENDERS[i % len(SENDERS)], password) for i in range(senders)]
    for token in tokens[1:len(SENDERS)]:
        await _call(session, "POST", f"{base}/_matrix/client/v3/join/{room}", token, {})
    latencies: list[float] = []
    failed: dict[str, int] = {}

    async def sender(token: str, n: int) -> None:
        for i in range(each):
            start = time.perf_counter()
            url = f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/{secrets.token_hex(8)}"
            async with session.put(url, json={"msgtype": "m.text", "body": f"load {n}.{i}"},
                                   headers={"Authorization": f"Bearer {token}"}) as resp:
                await resp.read()
                if resp.status == 200:
                    latencies.append((time.perf_counter() - start) * 1000)
                else:  # counted, not retried: what a client without retries would see
                    failed[str(resp.status)] = failed.get(str(resp.status), 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(sender(t, n) for n, t in enumerate(tokens)))
    elapsed = time.perf_counter() - started
    return {**summary(latencies), "messages_per_s": round(len(latencies) / elapsed, 1), "seconds": round(elapsed, 1),
            "failed": failed}


class _Ward:
    """One deployment's ICU: its MLLP listener, the on-duty ICU nurse's /sync, the ICU team
    room, and a direct chat a colleague writes to her in."""

    def __init__(self, d: Deployment, lis: Mllp, syncer: Syncer, icu: str, direct: str, colleague: str) -> None:
        self.d, self.lis, self.syncer, self.icu, self.direct, self.colleague = d, lis, syncer, icu, direct, colleague

    @classmethod
    async def open(cls, s: aiohttp.ClientSession, d: Deployment, stack: contextlib.AsyncExitStack) -> _Ward:
        base, pw, server = d.settings.homeserver_url, d.secrets["demo_password"], d.settings.server_name
        day = datetime.now(TZ).date() + timedelta(days=1)
        # 10:00 tomorrow: N3001 holds the ICU nurse role (the demo roster).
        await _clock(s, d.settings.appservice_url, d.secrets["as_token"],
                     datetime.combine(day, datetime.min.time(), TZ).replace(hour=10))
        nurse = await _login(s, base, "n3001", pw)
        colleague = await _login(s, base, "d2001", pw)
        icu = (await _call(s, "GET", f"{base}/_matrix/client/v3/directory/room/%23icu-team%3A{server}", nurse))["room_id"]
        direct = (await _call(s, "POST", f"{base}/_matrix/client/v3/createRoom", colleague,
                              {"invite": [f"@n3001:{server}"], "is_direct": True}))["room_id"]
        await _call(s, "POST", f"{base}/_matrix/client/v3/join/{direct}", nurse, {})
        syncer = Syncer(s, base, nurse)
        await syncer.prime()
        lis = await stack.enter_async_context(Mllp(d.settings.hl7_port))
        return cls(d, lis, syncer, icu, direct, colleague)

    async def critical(self) -> float:
        patient = f"CR{uuid.uuid4().hex[:8].upper()}"
        t0 = time.perf_counter()
        await self.lis.send(_critical(patient))
        return (await self.syncer.wait_for(self.icu, _critical_post(patient)) - t0) * 1000

    async def direct_message(self, s: aiohttp.ClientSession) -> float:
        marker = uuid.uuid4().hex
        t0 = time.perf_counter()
        await _call(s, "PUT", f"{self.d.settings.homeserver_url}/_matrix/client/v3/rooms/{self.direct}/send/m.room.message/"
                    f"{marker}", self.colleague, {"msgtype": "m.text", "body": f"K+ recheck please {marker}"})
        seen = await self.syncer.wait_for(self.direct, lambda e: marker in str(e.get("content", {}).get("body", "")))
        return (seen - t0) * 1000


async def _critical_alerts(s: aiohttp.ClientSession, deployments: dict[str, Deployment], rounds: int, warmup: int) -> dict:
    """Critical result -> ICU nurse's /sync, and a direct message to her, rounds alternating
    between the deployments (one at a time, the other idle)."""
    async with contextlib.AsyncExitStack() as stack:
        wards = {n: await _Ward.open(s, d, stack) for n, d in deployments.items()}
        took: dict[str, dict[str, list[float]]] = {n: {"critical": [], "direct": []} for n in wards}
        for i in range(warmup + rounds):
            for n, ward in wards.items():
                critical, direct = await ward.critical(), await ward.direct_message(s)
                if i >= warmup:
                    took[n]["critical"].append(critical)
                    took[n]["direct"].append(direct)
    return {
        "critical": comparison(
            f"critical HL7 result -> ICU nurse's /sync, {rounds} each, PostgreSQL",
            summary(took["monolith"]["critical"]), summary(took["workers"]["critical"]), labels=("one process", "workers"),
        ),
        "direct": comparison(
            f"colleague's direct message -> the same nurse's /sync, {rounds} each, PostgreSQL",
            summary(took["monolith"]["direct"]), summary(took["workers"]["direct"]), labels=("one process", "workers"),
        ),
    }


async def _org_sync(work: Path, staff: int, units: int, which: tuple[str, ...] = ("monolith", "workers")) -> dict:
    """Org sync on each deployment alone, one process first (``which``: only these, for a
    size whose two syncs take longer together than a benchmark run should)."""
    out = {}
    for name, on_workers in (("monolith", False), ("workers", True)):
        if name not in which:
            continue
        dbname = f"carematrix_bench_org_{'wk' if on_workers else 'mono'}_{secrets.token_hex(3)}"
        try:
            out[name] = await org_sync.sync_at_scale(
                work / name[0], staff, units, "postgres", database_url(TEST_SERVER_URL, dbname),
                floor=False, workers=on_workers,
            )
        finally:
            drop_pg_databases(dbname)
        print(f"org sync, {name}: {out[name]}", flush=True)
    return {"staff": staff, "units": units, **out}


PARTS = ("roundtrip", "concurrent", "alerts", "orgsync")


async def measure(work: Path, messages: int, warmup: int, batch: int, senders: int, each: int,
                  parts: tuple[str, ...] = PARTS, alert_rounds: int = 40, orgsync_staff: int = 1000,
                  orgsync_units: int = 50, orgsync_on: tuple[str, ...] = ("monolith", "workers")) -> dict:
    result: dict = {}
    names = {"monolith": f"carematrix_bench_mono_{secrets.token_hex(3)}", "workers": f"carematrix_bench_wk_{secrets.token_hex(3)}"}
    if {"roundtrip", "concurrent", "alerts"} & set(parts):
        deployments = {n: _deployment(work, n, db, n == "workers") for n, db in names.items()}
        stacks = {n: Stack(d) for n, d in deployments.items()}
        try:
            for n, s in stacks.items():
                s.start()
                Seeder(deployments[n]).run()
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                # Each part's figures are printed as soon as they are measured.
                if "roundtrip" in parts:
                    result["roundtrip"] = await _roundtrip(session, deployments, messages, warmup, batch)
                    print(f"roundtrip: {result['roundtrip']}", flush=True)
                if "alerts" in parts:
                    result["alerts"] = await _critical_alerts(session, deployments, alert_rounds, warmup=3)
                    print(f"alerts: {result['alerts']}", flush=True)
                if "concurrent" in parts:
                    load = {n: await _concurrent(session, deployments[n], senders, each) for n in deployments}
                    result["concurrent"] = {"senders": senders, "each": each, **load}
                    print(f"concurrent: {result['concurrent']}", flush=True)
        finally:
            for s in stacks.values():
                s.stop()
            for db in names.values():
                drop_pg_databases(db)
    if "orgsync" in parts:
        result["orgsync"] = await _org_sync(work, orgsync_staff, orgsync_units, orgsync_on)
    return result


async def _roundtrip(session: aiohttp.ClientSession, deployments: dict[str, Deployment], messages: int, warmup: int,
                     batch: int) -> dict:
    endpoints = {n: await carematrix_endpoint(session, d, n) for n, d in deployments.items()}
    receivers = {n: Receiver(session, ep) for n, ep in endpoints.items()}
    for rx in receivers.values():
        await rx.prime()
    tasks = [asyncio.create_task(rx.run()) for rx in receivers.values()]
    samples: dict[str, list[float]] = {n: [] for n in endpoints}
    for n, ep in endpoints.items():
        for _ in range(warmup):
            await one_round_trip(session, ep, receivers[n])
    while min(len(v) for v in samples.values()) < messages:
        for n, ep in endpoints.items():
            for _ in range(min(batch, messages - len(samples[n]))):
                samples[n].append(await one_round_trip(session, ep, receivers[n]))
    for t in tasks:
        t.cancel()
    return comparison(
        f"message round trip (send -> other user's /sync), {messages} messages each, PostgreSQL",
        summary(samples["monolith"]), summary(samples["workers"]), labels=("one process", "workers"),
    )


def format_orgsync(result: dict) -> str:
    lines = [f"org sync, {result['staff']} staff / {result['units']} units, PostgreSQL, each deployment alone",
             f"  {'':<12}{'from scratch s':>15}{'re-sync s':>11}{'errors':>8}  by step; rooms/events by persister"]
    for name in ("monolith", "workers"):
        if name not in result:
            continue
        r = result[name]
        lines.append(f"  {name:<12}{r['from_scratch_s']:>15}{r['resync_unchanged_s']:>11}{r['from_scratch_error_count']:>8}"
                     f"  {r['from_scratch_phases_s']}; {r['rooms_and_events_by_instance']}")
    return "\n".join(lines)


def format_concurrent(result: dict) -> str:
    lines = [f"{result['senders']} concurrent senders x {result['each']} messages, one room, PostgreSQL",
             f"  {'':<14}{'msg/s':>8}{'p50 ms':>10}{'p99 ms':>10}{'seconds':>9}"]
    for name in ("monolith", "workers"):
        r = result[name]
        lines.append(f"  {name:<14}{r['messages_per_s']:>8}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}{r['seconds']:>9}"
                     f"  failed: {r['failed'] or 'none'}")
    return "\n".join(lines)
