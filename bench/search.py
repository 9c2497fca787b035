"""Directory and message search with Chinese names: CareMatrix against plain Synapse, both
filled alike and measured in the same run.

``dirsearch``: 5,000 staff named the way a hospital names them ("刘洋 Liu Yang · 心内科 主治医师")
plus on-duty role addresses, created through the admin API; then user-directory searches for
2-character names, units, titles and English words, alternating between the servers.

``msgsearch``: 100,000 messages per server (ward notes in Chinese with patients' names and lab
values, a third in English) sent through the client-server API, so each server creates, checks,
stores and indexes every one on its normal event path; then /search for a patient's name, a lab
word and an English word, alternating.

The fill is bound by the machine's CPU: every message costs each Synapse its event creation,
persistence and indexing (and PostgreSQL its writes), about 30 ms of CPU per message pair on
SQLite and 45 ms on PostgreSQL. Synapse creates one event at a time per room, so the notes are
spread over many rooms (16 per server by default) with enough requests in flight (32) to keep
both servers busy; the bench's users are exempt from Synapse's rate limits on both servers
alike (admin API ``override_ratelimit``). One sender per server: a second member in a room
would only add push-rule work to every message. With ``keep`` the two deployments, their
databases, the sender's access token and the rooms stay in that directory, and the fill goes
on where the last run stopped (``state.json`` counts the notes every server has), so 100,000
can be reached over several runs; resent notes of an unfinished chunk carry the same
transaction IDs from the same device, so Synapse stores each once.

Plain Synapse finds nothing for the Chinese terms (the reason for this work): its latency for
them is that of an empty answer, so the tables give the English terms apart, where both
servers do the same work.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.roundtrip import _call, _login, _register
from bench.stats import comparison, summary
from carematrix import cjk_search
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.settings import Deployment, Settings
from carematrix_ops.pgadmin import create_database, database_url, drop_database, on_maintenance_db
from carematrix_ops.seed import Seeder, shared_secret_registration
from carematrix_ops.supervisor import Stack
from tests.ports import TEST_SERVER_URL, free_port_pair

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
GIVEN = "伟芳娜秀敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华建国红玉梅鹏飞宇浩然子轩欣怡思雨佳琪"
PINYIN = ["Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou", "Xu", "Sun"]
UNITS = [
    ("心内科", "Cardiology"), ("重症医学科", "Intensive Care"), ("神经内科", "Neurology"), ("普外科", "General Surgery"),
    ("骨科", "Orthopaedics"), ("呼吸内科", "Respiratory"), ("急诊科", "Emergency"), ("儿科", "Paediatrics"),
    ("妇产科", "Obstetrics"), ("肿瘤科", "Oncology"), ("检验科", "Laboratory"), ("药剂科", "Pharmacy"),
]
TITLES = ["主任医师", "副主任医师", "主治医师", "住院医师", "护士长", "主管护师", "护师", "主管技师"]
ROLES = ["主班医生", "二线医生", "责任护士", "值班医生"]

DIRECTORY_TERMS = {
    "chinese": ["心内科", "主班医生", "重症医学科", "主治医师", "神经内科", "护士长"],
    "name": [],  # filled with 2-character names that exist
    "pinyin": [],  # filled with those names' pinyin and initials, and two units' initials
    "english": ["Cardiology", "attending", "Liu", "Oncology", "nurse"],
}
# Seconds between the fill and the searches, for the work Synapse does behind the last sends.
SETTLE_S = 10
MESSAGE_TERMS = {"chinese": ["王建国", "血钾", "复查", "肌酐"], "english": ["potassium", "creatinine", "ward round"]}

CHINESE_NOTES = [
    "患者{name}血钾{v}mmol/L，请复查", "{name}术后第{d}天，生命体征平稳", "{name}肌酐{v}，已通知主治医师",
    "{bed}床{name}血压偏高，遵医嘱给药", "交班：{name}夜间睡眠可，晨起血糖{v}",
]
ENGLISH_NOTES = [
    "Bed {bed}: serum potassium {v}, repeat the draw", "Ward round at {d} pm, creatinine trend reviewed",
    "Patient in bed {bed} stable overnight, glucose {v}",
]


def _name(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 1, 2))))


def staff_names(n: int, seed: int = 14) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        unit, unit_en = rng.choice(UNITS)
        if i % 50 == 0:
            out.append(f"{unit} · {rng.choice(ROLES)} (值班) {unit_en} – on duty")
        else:
            out.append(f"{_name(rng)} {rng.choice(PINYIN)} · {unit} {rng.choice(TITLES)} {unit_en}")
    return out


def note(rng: random.Random, i: int) -> str:
    values = {"name": "王建国" if i % 200 == 0 else _name(rng), "v": f"{rng.uniform(2, 9):.1f}", "d": rng.randint(1, 9), "bed": rng.randint(1, 40)}
    template = rng.choice(ENGLISH_NOTES if i % 3 == 0 else CHINESE_NOTES)
    return template.format(**values)


async def _timed(call: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await call()
    return (time.perf_counter() - start) * 1000


async def _parallel(jobs: list[Callable[[], Awaitable[Any]]], width: int) -> None:
    queue = list(reversed(jobs))

    async def worker() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(worker() for _ in range(width)))


class Server:
    def __init__(self, name: str, d: Deployment, admin: str, user: str) -> None:
        self.name, self.d, self.admin, self.user = name, d, admin, user
        self.base = d.settings.homeserver_url
        self.rooms: list[str] = []

    def uid(self, localpart: str) -> str:
        return f"@{localpart}:{self.d.settings.server_name}"


class Kept:
    """What a run leaves for the next in a kept directory (``state.json``): the databases, the
    access tokens, the rooms and how far each fill got. Without a kept directory it lives
    only as long as the run."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        if path is not None and path.exists():
            self.data = json.loads(path.read_text(encoding="utf-8"))

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, **values: Any) -> None:
        self.data.update(values)
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1), encoding="utf-8")
            os.replace(tmp, self.path)


async def _servers(
    session: aiohttp.ClientSession, plain_d: Deployment, cm_d: Deployment, kept: Kept
) -> list[Server]:
    tokens = kept.get("tokens")
    if tokens is None:
        base = plain_d.settings.homeserver_url
        nonce = (await _call(session, "GET", f"{base}/_synapse/admin/v1/register"))["nonce"]
        body = shared_secret_registration(
            plain_d.secrets["registration_shared_secret"], nonce, "bench-admin", "bench-password", True
        )
        plain_admin = (await _call(session, "POST", f"{base}/_synapse/admin/v1/register", body=body))["access_token"]
        plain_user = await _register(session, plain_d, "bench-nurse", "bench-password")
        # CareMatrix: a nurse of the demo hospital; the service account (a server admin) creates.
        cm_user = await _login(session, cm_d.settings.homeserver_url, "n3001", cm_d.secrets["demo_password"])
        tokens = {"plain": [plain_admin, plain_user], "carematrix": [cm_d.secrets["as_token"], cm_user]}
    servers = [Server("plain", plain_d, *tokens["plain"]), Server("carematrix", cm_d, *tokens["carematrix"])]
    for s in servers:
        # Synapse's rate limits (messages, rooms created, directory searches) do not apply to the
        # bench's user on either server: the benchmark measures searching, not the limits.
        who = (await _call(session, "GET", f"{s.base}/_matrix/client/v3/account/whoami", s.user))["user_id"]
        await _call(session, "POST", f"{s.base}/_synapse/admin/v1/users/{who}/override_ratelimit", s.admin,
                    {"messages_per_second": 0, "burst_count": 0})
    kept.set(tokens=tokens)
    return servers


async def fill_directory(
    session: aiohttp.ClientSession, servers: list[Server], names: list[str], width: int, kept: Kept
) -> float | None:
    """Create the staff on both servers (each through the admin API, Synapse indexes them
    behind the requests) and wait until the last is searchable. None: a kept directory
    already holds them."""
    if kept.get("staff", 0) >= len(names):
        return None
    start = time.perf_counter()
    for s in servers:
        async def create(i: int, name: str, s: Server = s) -> None:
            await _call(session, "PUT", f"{s.base}/_synapse/admin/v2/users/{s.uid(f'bench{i:05d}')}", s.admin, {"displayname": name})

        await _parallel([lambda i=i, name=name: create(i, name) for i, name in enumerate(names)], width)
    # The directory is updated behind the requests: wait until the last one is searchable.
    last = f"bench{len(names) - 1:05d}"
    for s in servers:
        deadline = time.monotonic() + 600
        while True:
            body = await _call(session, "POST", f"{s.base}/_matrix/client/v3/user_directory/search", s.user, {"search_term": last})
            if body["results"]:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{s.name}: the user directory did not catch up")
            await asyncio.sleep(1)
    kept.set(staff=len(names))
    return time.perf_counter() - start


async def open_rooms(session: aiohttp.ClientSession, servers: list[Server], rooms: int, kept: Kept) -> None:
    """The rooms the notes go to: made now, or the kept ones."""
    made = kept.get("rooms") or {}
    for s in servers:
        s.rooms = list(made.get(s.name, []))
        while len(s.rooms) < rooms:
            body: dict[str, Any] = {"preset": "private_chat"}
            s.rooms.append((await _call(session, "POST", f"{s.base}/_matrix/client/v3/createRoom", s.user, body))["room_id"])
    kept.set(rooms={s.name: s.rooms for s in servers})


async def fill_messages(
    session: aiohttp.ClientSession, servers: list[Server], n: int, width: int, budget_s: float, kept: Kept,
    chunk: int = 1000, say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Send the same notes to each server through the client-server API until each holds
    ``n``, ``width`` requests in flight, the servers interleaved so both grow alike, spread
    over each server's rooms (Synapse creates one room's events one at a time). Goes on from
    the count a kept directory holds, in chunks of ``chunk`` notes per server, each recorded
    when both servers have acknowledged all of it; no chunk is begun after ``budget_s``
    seconds. Returns the count reached, how many this run sent and the rate."""
    rng = random.Random(7)
    texts = [note(rng, i) for i in range(n)]
    done = kept.get("messages", 0)
    first = done
    started = time.perf_counter()
    while done < n and time.perf_counter() - started < budget_s:
        end = min(n, done + chunk)

        async def send(i: int, s: Server) -> None:
            room = s.rooms[i % len(s.rooms)]
            await _call(session, "PUT", f"{s.base}/_matrix/client/v3/rooms/{room}/send/m.room.message/b{i}", s.user,
                        {"msgtype": "m.text", "body": texts[i]})

        t0 = time.perf_counter()
        await _parallel([lambda i=i, s=s: send(i, s) for i in range(done, end) for s in servers], width)
        rate = len(servers) * (end - done) / (time.perf_counter() - t0)
        done = end
        kept.set(messages=done)
        say(f"  {done:,} of {n:,} notes per server; {rate:.0f} notes/s on both servers together, "
            f"load average {os.getloadavg()[0]:.1f}")
    elapsed = time.perf_counter() - started
    return {"messages": done, "sent_this_run": done - first, "fill_s": round(elapsed, 1),
            "notes_per_s": round(len(servers) * (done - first) / elapsed, 1) if elapsed > 0 else 0.0}


async def _sample(
    session: aiohttp.ClientSession, servers: list[Server], terms: dict[str, list[str]], rounds: int,
    request: Callable[[Server, str], tuple[str, dict]], count: Callable[[Any], int],
) -> dict[str, Any]:
    samples: dict[tuple[str, str], list[float]] = {(s.name, kind): [] for s in servers for kind in terms}
    per_term: dict[tuple[str, str], list[float]] = {(s.name, w): [] for s in servers for ws in terms.values() for w in ws}
    found: dict[tuple[str, str], int] = {}
    for _ in range(rounds):
        for kind, words in terms.items():
            for word in words:
                for s in servers:
                    path, body = request(s, word)
                    answer: list[Any] = []

                    async def call(path: str = path, body: dict = body, s: Server = s, answer: list[Any] = answer) -> None:
                        answer.append(await _call(session, "POST", s.base + path, s.user, body))

                    took = await _timed(call)
                    samples[(s.name, kind)].append(took)
                    per_term[(s.name, word)].append(took)
                    found[(s.name, word)] = count(answer[0])
    out: dict[str, Any] = {}
    for kind in terms:
        out[kind] = comparison(
            f"{kind} terms ({', '.join(terms[kind])})", summary(samples[("plain", kind)]), summary(samples[("carematrix", kind)])
        )
    out["results_per_term"] = {f"{name}: {word}": c for (name, word), c in found.items()}
    # Each term apart: a term's cost follows how many rows it matches (Synapse ranks them all).
    out["per_term"] = {
        f"{name}: {word}": {"results": found[(name, word)], **summary(times)} for (name, word), times in per_term.items()
    }
    return out


def reindex_at_start(stack: Stack, d: Deployment) -> dict[str, Any]:
    """How long an upgraded deployment's re-index of the directory takes: forget the
    recorded form, restart Synapse, and read the time it logs for the re-index."""
    from carematrix_ops.audit_db import connect
    from carematrix_ops.cli.our_tables import homeserver_db_target

    stack.synapse.stop()
    with connect(homeserver_db_target(d)) as db, db.transaction() as txn:
        txn.execute("DELETE FROM carematrix_search_form")
    log = d.paths.synapse_log
    seen = log.stat().st_size
    stack.restart_synapse()
    pattern = re.compile(r"re-indexed (\d+) rows of user_directory for Chinese search \(form [^)]*\) in ([\d.]+) s")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with open(log, encoding="utf-8", errors="replace") as f:
            f.seek(seen)
            found = pattern.search(f.read())
        if found:
            return {"rows": int(found.group(1)), "seconds": float(found.group(2))}
        time.sleep(0.5)
    raise RuntimeError("the directory re-index did not finish")


def _deployments(work: Path, database: str, kept: Kept) -> tuple[Deployment, Deployment, list[str]]:
    """The plain and the CareMatrix deployment in ``work``: new, or the kept ones on their
    databases (configs are rendered again, for new ports; secrets and data stay)."""
    if kept.get("database", database) != database:
        raise RuntimeError(f"{work} keeps a {kept.get('database')} run; use another directory for {database}")
    dbs: list[str] = list(kept.get("dbs") or [])
    urls: list[str | None] = [None, None]
    if database == "postgres":
        if not dbs:
            for i in range(2):
                dbname = f"carematrix_bench_search_{i}_{int(time.time())}"
                on_maintenance_db(TEST_SERVER_URL, create_database, dbname)
                dbs.append(dbname)
        urls = [database_url(TEST_SERVER_URL, dbname) for dbname in dbs]
    kept.set(database=database, dbs=dbs)
    plain = prepare(Settings(data_dir=work / "plain", port=free_port_pair(), relaxed_rate_limits=True, hl7_port=0, turn_port=0,
                             carematrix_enabled=False, database=database, db_url=urls[0]))
    cm = prepare(Settings(data_dir=work / "carematrix", port=free_port_pair(), relaxed_rate_limits=True, hl7_port=0, turn_port=0,
                          database=database, db_url=urls[1]))
    return plain, cm, dbs


async def measure(
    work: Path, what: str, staff: int, messages: int, rounds: int, database: str,
    width: int = 32, rooms: int = 16, budget_s: float = 3600, keep: bool = False,
) -> dict[str, Any]:
    """One benchmark on one database. ``keep``: ``work`` is kept for the next run (its
    deployments, databases and fills); otherwise everything made here is removed."""
    work.mkdir(parents=True, exist_ok=True)
    kept = Kept(work / "state.json" if keep else None)
    plain_d, cm_d, dbs = _deployments(work, database, kept)
    stacks = [Stack(plain_d), Stack(cm_d)]
    result: dict[str, Any] = {"database": database}
    try:
        for st in stacks:
            st.start()
        Seeder(cm_d).run()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(100, 2 * width))) as session:
            servers = await _servers(session, plain_d, cm_d, kept)
            if what == "dirsearch":
                if kept.get("staff", 0) > staff:
                    raise RuntimeError(f"{work} holds {kept.get('staff')} staff; use another directory for {staff}")
                names = staff_names(staff)
                filled = await fill_directory(session, servers, names, width, kept)
                result["fill_s"] = round(filled, 1) if filled is not None else "kept"
                terms = dict(DIRECTORY_TERMS)
                terms["name"] = sorted({n.split()[0] for n in names if len(n.split()[0]) == 2})[:6]
                # how the same people are typed on a Latin keyboard: whole pinyin, initials
                spelt = [cjk_search.pinyin_words(n) for n in terms["name"]]
                terms["pinyin"] = [w[0] for w in spelt[:3]] + [w[1] for w in spelt[3:]] + ["xnk", "zzyxk"]
                result["staff"] = staff
                result["reindex"] = reindex_at_start(stacks[1], cm_d)
                result["load_average"] = [round(x, 1) for x in os.getloadavg()]
                result.update(await _sample(
                    session, servers, terms, rounds,
                    lambda s, w: ("/_matrix/client/v3/user_directory/search", {"search_term": w, "limit": 10}),
                    lambda body: len(body["results"]),
                ))
            else:
                await open_rooms(session, servers, rooms, kept)
                fill = await fill_messages(session, servers, messages, width, budget_s, kept,
                                           say=lambda line: print(line, flush=True))
                result.update(fill)
                result["messages_asked"] = messages
                result["rooms_per_server"] = len(servers[0].rooms)
                await asyncio.sleep(SETTLE_S)  # what Synapse does behind the last sends
                result["load_average"] = [round(x, 1) for x in os.getloadavg()]
                result.update(await _sample(
                    session, servers, MESSAGE_TERMS, rounds,
                    lambda s, w: ("/_matrix/client/v3/search", {"search_categories": {"room_events": {
                        "search_term": w, "filter": {"rooms": s.rooms, "limit": 10}}}}),
                    lambda body: int(body["search_categories"]["room_events"].get("count") or 0),
                ))
    finally:
        for st in stacks:
            st.stop()
        if not keep:
            for dbname in dbs:
                on_maintenance_db(TEST_SERVER_URL, drop_database, dbname)
    return result


def format_result(result: dict[str, Any]) -> str:
    from bench.stats import format_comparison

    if "messages" in result:
        sent = (f"{result['sent_this_run']:,} sent in this run, {result['fill_s']} s" if result["sent_this_run"]
                else "all sent by earlier runs")
        size = f"{result['messages']:,} messages per server ({sent})"
    else:
        filled = "kept from an earlier run" if result["fill_s"] == "kept" else f"filled in {result['fill_s']} s"
        size = f"{result['staff']:,} staff ({filled})"
    lines = [f"{result['database']}, {size}"]
    if "load_average" in result:
        lines.append(f"  load average before the searches: {' / '.join(str(x) for x in result['load_average'])} (1 / 5 / 15 min)")
    if "reindex" in result:
        lines.append(f"  re-index at start: {result['reindex']['rows']} directory rows in {result['reindex']['seconds']} s")
    for value in result.values():
        if isinstance(value, dict) and "benchmark" in value:
            lines.append(format_comparison(value))
    lines.append("  per term: results, p50 / p99 ms")
    for key, value in result["per_term"].items():
        lines.append(f"    {key}: {value['results']:,}, {value['p50_ms']:.1f} / {value['p99_ms']:.1f}")
    return "\n".join(lines)
