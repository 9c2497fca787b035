"""Helpers for end-to-end tests: a real stack, real HTTP, a real Matrix client (matrix-nio)."""

from __future__ import annotations

import asyncio
import filecmp
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nio import AsyncClient, LoginResponse

from carematrix_ops.deploy.checks import check_port_free
from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.postgres import appservice_pg_dbname
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.settings import Deployment, Settings
from carematrix_ops.pgadmin import database_url, drop_database, on_maintenance_db
from carematrix_ops.seed import Seeder, SeedResult
from carematrix_ops.supervisor import Stack
from tests.paths import DEMO_POLICY_DIR
from tests.ports import TEST_SERVER_URL, free_port, free_port_pair

WAIT_SECONDS = 30.0  # how long a test waits for something to arrive before failing
# Every test stack's appservice joins the packaged speech model here, once for the whole run
# (verified by its checksum at each start), not 145 MB into each stack's data dir.
VOICE_MODEL_CACHE = Path(tempfile.gettempdir()) / "carematrix-test-voice-models"


def drop_pg_databases(dbname: str) -> None:
    on_maintenance_db(TEST_SERVER_URL, drop_database, dbname, appservice_pg_dbname(dbname))


def rooms_and_events_by_instance(db_url: str, rooms: list[str] | None = None) -> dict[str, list[int]]:
    """Which Synapse process persisted what, read from Synapse's events table (PostgreSQL):
    [rooms, events] by instance name (of ``rooms``, default all)."""
    from carematrix_ops.audit_db import connect

    where = "WHERE room_id = ANY(%s)" if rooms is not None else ""
    with connect(db_url) as db, db.transaction(read_only=True) as txn:
        txn.execute(f"SELECT instance_name, count(DISTINCT room_id), count(*) FROM events {where} GROUP BY instance_name",
                    (rooms,) if rooms is not None else ())
        return {str(name or "master"): [int(r), int(e)] for name, r, e in txn.fetchall()}


# A problem in a log: Python logging's ERROR/CRITICAL (our format and Synapse's), a
# traceback, or an error/fatal line of Orthanc (the demo PACS, glog format) or PostgreSQL.
_PROBLEM = re.compile(
    r"\bERROR\b|\bCRITICAL\b|Traceback \(most recent call last\)|^[EF]\d{4} |\bFATAL:|\bPANIC:", re.MULTILINE
)
PG_SERVER_LOGS = "/var/log/postgresql/postgresql-*-main.log"  # where the test server logs (Debian)


def log_files(data_dir: Path) -> list[Path]:
    """Every log under a data dir: Synapse's homeserver log, the appservice's, and the
    captured output of each supervised process (logs/*.out)."""
    return sorted(p for p in data_dir.rglob("*") if p.is_file() and (".log" in p.name or p.suffix == ".out"))


def same_tree(a: Path, b: Path) -> bool:
    """Whether two directories hold the same files with the same contents."""
    cmp = filecmp.dircmp(a, b)
    return not (cmp.left_only or cmp.right_only or cmp.diff_files) and all(
        same_tree(a / d, b / d) for d in cmp.common_dirs
    )


def log_sizes(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_size if p.exists() else 0 for p in paths}


def pg_server_logs() -> list[Path]:
    return [p for p in Path("/").glob(PG_SERVER_LOGS.lstrip("/")) if os.access(p, os.R_OK)]


def log_problems(since: dict[Path, int], until: dict[Path, int] | None = None, only: str | None = None) -> list[str]:
    """The problem lines each log gained between two ``log_sizes`` snapshots (``until``
    None: to its end), as "file: line"; ``only``: just lines mentioning it (one database's
    lines in a shared PostgreSQL log)."""
    found = []
    for path, start in since.items():
        if not path.exists():
            continue
        with path.open("rb") as f:
            f.seek(start)
            data = f.read() if until is None else f.read(max(0, until.get(path, start) - start))
        for line in data.decode(errors="replace").splitlines():
            if _PROBLEM.search(line) and (only is None or only in line):
                found.append(f"{path}: {line}")
    return found


@dataclass
class RunningStack:
    backend: str
    deployment: Deployment
    stack: Stack
    seed: SeedResult
    policy_dir: Path
    pg_dbname: str | None
    # How far each log had got when the stack was ready, and where the PostgreSQL server's
    # own log stood before it started: the start's log lines, for the clean-start test.
    ready_logs: dict[Path, int] = field(default_factory=dict)
    pg_logs_before: dict[Path, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.deployment.settings.homeserver_url

    @property
    def server_name(self) -> str:
        return self.deployment.settings.server_name

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    @property
    def bot_user_id(self) -> str:
        return self.deployment.bot_user_id

    @property
    def announcement_room(self) -> str:
        return self.seed.announcement_room_id

    async def login(self, localpart: str) -> AsyncClient:
        client = AsyncClient(self.url, self.user_id(localpart))
        resp = await client.login(self.deployment.secrets["demo_password"], device_name="e2e-test")
        assert isinstance(resp, LoginResponse), f"login as {localpart} failed: {resp}"
        return client


def start_stack(backend: str, base: Path, **settings_overrides: Any) -> RunningStack:
    """A stack on ``backend``: "sqlite", "postgres" or "workers" (PostgreSQL, Synapse as a
    main process and workers behind the reverse proxy, its own Redis)."""
    policy_dir = base / "policies"
    shutil.copytree(DEMO_POLICY_DIR, policy_dir)
    pg_dbname = None
    db_url = None
    if backend in ("postgres", "workers"):
        pg_dbname = f"carematrix_test_{secrets.token_hex(4)}"
        db_url = database_url(TEST_SERVER_URL, pg_dbname)
    settings = Settings(
        data_dir=base / "var",
        port=free_port_pair(),
        database="postgres" if backend == "workers" else backend,
        db_url=db_url,
        workers=backend == "workers",
        policy_dir=policy_dir,
        relaxed_rate_limits=True,
        audit_checkpoint_seconds=2,
        # A half MLLP frame is closed after 3 s (30 in production) so the timeout test is short;
        # every other test sends whole frames.
        **{"retention_purge_seconds": 5, "test_clock": True, "hl7_port": free_port(), "turn_port": free_port(),
           "hl7_frame_timeout_seconds": 3, "voice_model_cache": str(VOICE_MODEL_CACHE), **settings_overrides},
    )
    deployment = prepare(settings)
    stack = Stack(deployment)
    pg_logs_before = log_sizes(pg_server_logs()) if settings.database == "postgres" else {}
    try:
        stack.start()
        seed = Seeder(deployment).run()
    except BaseException:
        # A stack that did not come up leaves nothing behind: its processes and, on
        # PostgreSQL, its two databases (a failed start used to leave them on the server).
        stack.stop()
        if pg_dbname:
            drop_pg_databases(pg_dbname)
        raise
    ready_logs = log_sizes(log_files(deployment.paths.root) + list(pg_logs_before))
    return RunningStack(backend, deployment, stack, seed, policy_dir, pg_dbname, ready_logs, pg_logs_before)


def stop_stack(running: RunningStack) -> None:
    running.stack.stop()
    if running.pg_dbname:
        drop_pg_databases(running.pg_dbname)


def timeline_events(sync_response: Any, room_id: str) -> list[dict]:
    room = sync_response.rooms.join.get(room_id)
    if room is None:
        return []
    return [e.source for e in room.timeline.events]


async def wait_for_event(
    client: AsyncClient,
    room_id: str,
    predicate: Callable[[dict], bool],
    timeout: float = WAIT_SECONDS,
) -> dict:
    """Sync until an event in ``room_id`` matches; fail the test if none does in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = await client.sync(timeout=1000)
        for event in timeline_events(resp, room_id):
            if predicate(event):
                return event
    raise AssertionError(f"no matching event in {room_id} within {timeout:.0f}s")


async def eventually(check: Callable[[], Any], timeout: float = WAIT_SECONDS, interval: float = 0.3) -> Any:
    """Retry an async or sync check until it returns a truthy value (for reloads in flight)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout:.0f}s (last result: {last!r})")


CLI = str(Path(sys.executable).parent / "carematrix")


def audit_cli(stack: RunningStack, *args: str, login: str | None = "a0002") -> subprocess.CompletedProcess:
    extra = ["--login", login] if login and args[0] == "search" else []
    return subprocess.run(
        [CLI, "audit", *args, *extra, "--data-dir", str(stack.deployment.settings.data_dir)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "CAREMATRIX_PASSWORD": stack.deployment.secrets["demo_password"]},
    )

class UpProcess:
    """`carematrix up` in the background, read until it says it is ready.

    ``cli`` is the ``carematrix`` command to run, ``env`` the environment it starts from
    (default: this process's) and ``cwd`` where it runs (default: here)."""

    def __init__(
        self, data_dir: Path, port: int, *args: str, cli: str = CLI, env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            [cli, "up", "--data-dir", str(data_dir), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            # A free MLLP port too: other stacks on this machine may hold the default 2575.
            env={**(os.environ if env is None else env), "CAREMATRIX_PORT": str(port),
                 "CAREMATRIX_HL7_PORT": str(free_port()), "CAREMATRIX_TURN_PORT": str(free_port())},
        )
        self.lines: list[str] = []

    def wait_ready(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("carematrix up exited early:\n" + "".join(self.lines))
            self.lines.append(line)
            if line.startswith("Press Ctrl-C"):
                return "".join(self.lines)
        raise AssertionError("carematrix up did not become ready:\n" + "".join(self.lines))

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        rest, _ = self.proc.communicate(timeout=60)
        return self.proc.returncode, rest


def port_is_free(port: int) -> bool:
    """Nobody listens on it: `carematrix up` would find it free (its own check, which ignores
    TIME_WAIT leftovers as servers do)."""
    try:
        check_port_free("127.0.0.1", port, "test", "")
    except DeployError:
        return False
    return True


def search(stack: RunningStack, *filters: str, login: str = "a0002") -> list[dict]:
    result = audit_cli(stack, "search", *filters, "--format", "json", "--limit", "1000", login=login)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
