"""``carematrix deploy`` as an operator uses it: a hosts file of three machines — the loopback
addresses 127.0.0.1, 127.0.0.2 and 127.0.0.3 stand in for them — rendered, each machine's
tree installed in its own data dir, every process started from the command line of its
rendered systemd unit, in the order the units give, and staff messaging through the proxy
with a real Matrix client (matrix-nio): what they send arrives, rooms are persisted on both
worker machines, `carematrix status` finds every process on its machine, and the one audit
chain verifies."""

from __future__ import annotations

import re
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nio import AsyncClient, LoginResponse, RoomCreateResponse, RoomSendResponse, SyncResponse

from carematrix_ops.deploy import workers
from carematrix_ops.deploy.record import load_existing
from carematrix_ops.deploy.settings import Deployment
from carematrix_ops.deploy.units import parse_exec
from carematrix_ops.http import redis_ping
from carematrix_ops.pgadmin import database_url
from carematrix_ops.supervisor import ManagedProcess, StartupFailed
from tests.paths import DEMO_POLICY_DIR
from tests.ports import TEST_SERVER_URL
from tests.support import (
    CLI,
    VOICE_MODEL_CACHE,
    WAIT_SECONDS,
    drop_pg_databases,
    log_files,
    log_problems,
    log_sizes,
    rooms_and_events_by_instance,
    timeline_events,
)

MACHINES = {"core": "127.0.0.1", "app1": "127.0.0.2", "app2": "127.0.0.3"}
RUNS = {
    "core": ["proxy", "main", "appservice", "redis", "background"],
    "app1": ["client", "events", "media"],
    "app2": ["client", "events", "writer"],
}
# The order processes come up in: within a machine the units' After= gives it; across
# machines, the main process before the workers (docs/scale.md).
START_RANK = ("redis", "synapse-main", "synapse-", "proxy", "appservice", "seed")


def _free_everywhere(count: int) -> int:
    """A port p with p .. p+count-1 free on every machine's address."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + count >= 65000:
            continue
        held = []
        try:
            for address in MACHINES.values():
                for p in range(port, port + count):
                    sock = socket.socket()
                    held.append(sock)
                    sock.bind((address, p))
            return port
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no free ports on the loopback machines")


@dataclass
class Layout:
    out: Path
    hosts_file: Path
    data_dirs: dict[str, Path]
    processes: list[ManagedProcess]
    core: Deployment
    dbname: str
    ready_logs: dict[Path, int]

    @property
    def url(self) -> str:
        return self.core.settings.homeserver_url

    async def login(self, localpart: str) -> AsyncClient:
        client = AsyncClient(self.url, f"@{localpart}:{self.core.settings.server_name}")
        resp = await client.login(self.core.secrets["demo_password"], device_name=f"hosts-{uuid.uuid4().hex[:6]}")
        assert isinstance(resp, LoginResponse), resp
        return client


def _unit(path: Path) -> dict[str, str]:
    keys = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("ExecStart", "WorkingDirectory", "Type", "After"):
            keys[key] = value
    return keys


def _health(name: str, deployment: Deployment) -> tuple[str, object]:
    """How a started unit is known to be up: its Synapse process's /health on the machine's
    address, the proxy's client API, the appservice's health, Redis's PING."""
    s = deployment.settings
    layout = workers.layout_for(s, deployment.paths)
    process = name.removeprefix("carematrix-").removeprefix("synapse-")
    if name.startswith("carematrix-synapse-"):
        listen = layout.public[process]
        return f"http://{listen}/health", None
    if process == "proxy":
        return f"{s.homeserver_url}/_matrix/client/versions", None
    if process == "appservice":
        return f"{s.appservice_url}/_carematrix/health", None
    host, port = workers.parse_redis(s.redis or "")
    return "", lambda: redis_ping(host=host, port=port, password=deployment.secrets[workers.REDIS_PASSWORD])


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layout]:
    base = tmp_path_factory.mktemp("hosts")
    shared = base / "shared"
    shutil.copytree(DEMO_POLICY_DIR, shared / "policies")
    (shared / "media").mkdir()
    data_dirs = {name: base / name for name in MACHINES}
    synapse_port = _free_everywhere(8)
    edge = _free_everywhere(3)
    dbname = f"carematrix_hosts_{secrets.token_hex(4)}"
    hosts_file = base / "hosts.yaml"
    machines = "\n".join(
        f"  {name}:\n    address: {address}\n    data_dir: {data_dirs[name]}\n    runs: [{', '.join(RUNS[name])}]"
        for name, address in MACHINES.items()
    )
    hosts_file.write_text(
        f"server_name: renhe.test\n"
        f"database: {database_url(TEST_SERVER_URL, dbname)}\n"
        f"demo: true\n"
        # The test server's PostgreSQL is shared with other stacks: 8 Synapse processes x 3.
        f"db_pool: 3\n"
        f"voice_models: {VOICE_MODEL_CACHE}\n"
        f"shared:\n  policy_dir: {shared / 'policies'}\n  media_store: {shared / 'media'}\n"
        f"ports:\n  synapse: {synapse_port}\n  proxy: {edge}\n  appservice: {edge + 1}\n  redis: {edge + 2}\n  hl7: 0\n"
        f"hosts:\n{machines}\n",
        encoding="utf-8",
    )
    out = base / "out"
    rendered = subprocess.run([CLI, "deploy", "render", str(hosts_file), "--out", str(out)],
                              capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    processes: list[tuple[int, ManagedProcess, Deployment, str]] = []
    for name, data_dir in data_dirs.items():
        tree = out / name
        # What `rsync -a OUT/NAME/ NAME:/` installs: the data dir (the units stay in the tree).
        shutil.copytree(tree / data_dir.relative_to("/"), data_dir)
        deployment = load_existing(data_dir)
        for unit_file in sorted((tree / "etc" / "systemd" / "system").glob("*.service")):
            unit = _unit(unit_file)
            unit_name = unit_file.stem
            url, check = _health(unit_name, deployment) if unit.get("Type") != "oneshot" else ("", None)
            rank = next(i for i, prefix in enumerate(START_RANK) if unit_name.removeprefix("carematrix-").startswith(prefix))
            proc = ManagedProcess(unit_name, parse_exec(unit["ExecStart"]), data_dir / "logs" / f"{unit_name}.out",
                                  Path(unit["WorkingDirectory"]), url, health_check=check)  # type: ignore[arg-type]
            processes.append((rank, proc, deployment, unit.get("Type", "simple")))
    processes.sort(key=lambda item: item[0])
    started: list[ManagedProcess] = []
    core = load_existing(data_dirs["core"])
    try:
        for _, proc, _, kind in processes:
            proc.start()
            started.append(proc)
            if kind == "oneshot":
                assert proc.popen is not None
                assert proc.popen.wait(600) == 0, proc.tail(30)
                continue
            _wait_healthy(proc)
        ready_logs = log_sizes([p for d in data_dirs.values() for p in log_files(d)])
        yield Layout(out, hosts_file, data_dirs, started, core, dbname, ready_logs)
    finally:
        for proc in reversed(started):
            proc.stop()
        drop_pg_databases(dbname)


def _wait_healthy(proc: ManagedProcess, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartupFailed(f"{proc.name} exited during start-up:\n{proc.tail(30)}")
        if proc.healthy():
            return
        time.sleep(0.3)
    raise StartupFailed(f"{proc.name} not healthy after {timeout:.0f}s:\n{proc.tail(30)}")


async def test_messages_through_the_proxy_arrive_rooms_are_persisted_on_both_machines_and_the_chain_verifies(
    layout: Layout,
):
    doctor = await layout.login("d1001")
    nurse = await layout.login("n3001")
    colleague = await layout.login("d2001")
    sent: dict[str, str] = {}
    try:
        rooms = []
        for i in range(6):
            created = await doctor.room_create(name=f"hosts {i} {uuid.uuid4().hex[:6]}",
                                               invite=[nurse.user_id, colleague.user_id])
            assert isinstance(created, RoomCreateResponse), created
            await nurse.join(created.room_id)
            await colleague.join(created.room_id)
            rooms.append(created.room_id)
        await nurse.sync(timeout=0)
        for room in rooms:
            for sender in (doctor, colleague):
                body = f"K+ 6.9, bed {uuid.uuid4().hex[:6]} from {sender.user_id}"
                resp = await sender.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})
                assert isinstance(resp, RoomSendResponse), resp
                sent[resp.event_id] = room
        # The nurse's client receives every one of them.
        seen: set[str] = set()
        deadline = time.monotonic() + WAIT_SECONDS
        while not set(sent) <= seen and time.monotonic() < deadline:
            resp = await nurse.sync(timeout=1000)
            assert isinstance(resp, SyncResponse), resp
            seen |= {e["event_id"] for room in rooms for e in timeline_events(resp, room)}
        assert set(sent) <= seen, f"{len(set(sent) - seen)} of {len(sent)} messages did not reach the nurse"
    finally:
        for client in (doctor, nurse, colleague):
            await client.close()
    # events1 runs on app1, events2 on app2.
    assert set(rooms_and_events_by_instance(layout.core.settings.db_url or "", rooms)) == {"events1", "events2"}
    verified = subprocess.run([CLI, "audit", "verify", "--data-dir", str(layout.data_dirs["core"])],
                              capture_output=True, text=True, timeout=300)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_status_finds_every_process_on_its_machine(layout: Layout):
    for machine, data_dir in layout.data_dirs.items():
        if "main" not in RUNS[machine] and "client" not in RUNS[machine]:
            continue
        result = subprocess.run([CLI, "status", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        for name in ("main", "background1", "client1", "client2", "events1", "events2", "media1", "writer1"):
            assert re.search(rf"synapse {name} +OK", result.stdout), result.stdout
        assert re.search(r"^\s+redis\s+OK", result.stdout, re.M), result.stdout


def test_a_clean_start_logs_no_error(layout: Layout):
    assert any(p.name == "homeserver.log" for p in layout.ready_logs)
    assert any(p.name == "appservice.log" for p in layout.ready_logs)
    assert log_problems({p: 0 for p in layout.ready_logs}, layout.ready_logs) == []
