"""The worker deployment (``carematrix up --workers``) as its users see it: one URL, each
endpoint served by the process Synapse's workers documentation gives it, rooms spread over
two event persisters, background work on one instance, policy edits reaching every process,
one audit chain with records from every process, and a killed process restarted by the
supervisor without losing an accepted message.

The suites of room classes, protection, audit, reloads, on-call and clinical run on this
deployment too (their modules are marked ``worker_pass``)."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from nio import (
    AsyncClient,
    RoomCreateResponse,
    RoomGetEventResponse,
    RoomSendResponse,
    UploadResponse,
)

from carematrix.policy import load_policy
from carematrix_ops.cli.status import worker_processes
from carematrix_ops.deploy import workers
from tests.clinical_support import ack_code, bodies, hl7, send_mllp
from tests.support import CLI, RunningStack, audit_cli, eventually, search

pytestmark = pytest.mark.workers_only

PROCESSES = [workers.MAIN, *(w.name for w in workers.TOPOLOGY)]


def synapse_log(stack: RunningStack, name: str) -> Path:
    paths = stack.deployment.paths
    return paths.synapse_log if name == workers.MAIN else workers.worker_log(paths, name)


def log_ends(stack: RunningStack) -> dict[str, int]:
    """Where each process's log ends now: a test reads only what it caused (the stack is
    shared, and earlier tests' clients of the same user were given other workers)."""
    return {name: synapse_log(stack, name).stat().st_size if synapse_log(stack, name).exists() else 0
            for name in PROCESSES}


def served_by(
    stack: RunningStack, user_id: str, method: str, path_re: str, since: dict[str, int] | None = None,
) -> set[str]:
    """The Synapse processes whose request log has ``method`` on a path matching ``path_re``
    for ``user_id`` (after ``since``, from :func:`log_ends`)."""
    line = re.compile(r"\{" + re.escape(user_id) + r"\} Processed request: .*\"" + method + " " + path_re)

    def text(name: str) -> str:
        with synapse_log(stack, name).open("rb") as f:
            f.seek((since or {}).get(name, 0))
            return f.read().decode(errors="replace")

    return {name for name in PROCESSES if synapse_log(stack, name).exists() and line.search(text(name))}


async def shared_room(owner: AsyncClient, *members: AsyncClient, name: str = "") -> str:
    created = await owner.room_create(name=name or f"workers {uuid.uuid4().hex[:6]}", invite=[m.user_id for m in members])
    assert isinstance(created, RoomCreateResponse), created
    for member in members:
        await member.join(created.room_id)
    return created.room_id


def test_status_shows_every_process_healthy_and_one_background_instance(stack: RunningStack):
    result = subprocess.run(
        [CLI, "status", "--data-dir", str(stack.deployment.settings.data_dir)], capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {name: next((ln for ln in result.stdout.splitlines() if f"synapse {name} " in ln), "") for name in PROCESSES}
    assert all(" OK " in line and re.search(r"lag \d+ events", line) for line in lines.values()), result.stdout
    assert [name for name, line in lines.items() if line.endswith("background")] == ["background1"]
    assert re.search(r"^\s+redis\s+OK", result.stdout, re.M), result.stdout


async def test_each_endpoint_is_served_by_the_process_that_owns_it(stack: RunningStack):
    since = log_ends(stack)
    doctor = await stack.login("d1001")
    nurse = await stack.login("n3002")
    try:
        room = await shared_room(doctor, nurse)
        assert isinstance(await doctor.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "routed"}), RoomSendResponse)
        await doctor.sync(timeout=0)
        await doctor.room_typing(room, True, timeout=3000)
        data = b"not an image, just a file"
        up, _ = await doctor.upload(io.BytesIO(data), content_type="text/plain", filename="note.txt", filesize=len(data))
        assert isinstance(up, UploadResponse), up
        got = await doctor.download(up.content_uri)
        assert getattr(got, "body", None) == data, got
        await doctor.set_presence("online")  # presence is written by the main process
    finally:
        await doctor.close()
        await nurse.close()
    user = doctor.user_id
    client_workers = {w.name for w in workers.TOPOLOGY if "client" in w.resources}
    sync = served_by(stack, user, "GET", r"/_matrix/client/v3/sync", since)
    send = served_by(stack, user, "PUT", r"/_matrix/client/v3/rooms/[^/]+/send/", since)
    # A client's requests stay on one generic worker, so its /sync sees its own writes.
    assert len(sync) == 1 and sync <= client_workers and send == sync
    assert served_by(stack, user, "PUT", r"/_matrix/client/v3/rooms/[^/]+/typing/", since) == {"client1"}
    assert served_by(stack, user, "POST", r"/_matrix/media/v3/upload", since) == {"media1"}
    assert served_by(stack, user, "GET", r"/_matrix/(media/v3|client/v1/media)/download/", since) == {"media1"}
    assert served_by(stack, user, "PUT", r"/_matrix/client/v3/presence/", since) == {"main"}


async def test_rooms_are_spread_over_both_event_persisters(stack: RunningStack):
    from carematrix_ops.audit_db import connect

    doctor = await stack.login("d1002")
    try:
        rooms = [await shared_room(doctor) for _ in range(8)]
        for room in rooms:
            assert isinstance(await doctor.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "x"}), RoomSendResponse)
    finally:
        await doctor.close()
    with connect(stack.deployment.settings.db_url or "") as db, db.transaction(read_only=True) as txn:
        txn.execute("SELECT DISTINCT instance_name FROM events WHERE room_id = ANY(%s)", (rooms,))
        persisters = {row[0] for row in txn.fetchall()}
    assert persisters == {"client1", "client2"}


@pytest.fixture
def staff_policy(stack: RunningStack) -> Iterator[Path]:
    """The running stack's rooms.yaml, restored (and back in force everywhere) after the test."""
    path = stack.policy_dir / "rooms.yaml"
    original = path.read_text(encoding="utf-8")
    yield path
    path.write_text(original, encoding="utf-8")
    good = load_policy(stack.policy_dir).digest
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and {r.get("digest") for r in worker_processes(stack.deployment)} != {good}:
        time.sleep(0.3)


async def _all_enforce(stack: RunningStack, digest: str) -> bool:
    rows = worker_processes(stack.deployment)
    return len(rows) == len(PROCESSES) and all(r.get("digest") == digest for r in rows)


async def test_a_policy_edit_reaches_every_process_and_each_records_it_in_the_one_chain(
    stack: RunningStack, staff_policy: Path,
):
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    text = staff_policy.read_text(encoding="utf-8")
    staff_policy.write_text(
        text.replace("roles: [announcer]\n    create", "roles: [announcer]\n      staff: [D1001]\n    create", 1),
        encoding="utf-8",
    )
    edited = load_policy(stack.policy_dir).digest
    started = time.monotonic()
    await eventually(lambda: _all_enforce(stack, edited), timeout=30)
    print(f"policy edit in force on all {len(PROCESSES)} Synapse processes after {time.monotonic() - started:.1f}s")
    reloads = search(stack, "--action", "policy.reload", "--since", since)
    processes = {r["process"] for r in reloads if r["details"].get("digest") == edited}
    assert set(PROCESSES) <= processes
    verified = audit_cli(stack, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_concurrent_senders_on_every_client_worker_leave_one_intact_chain(stack: RunningStack):
    logins = ["d1001", "d1002", "d2001", "n3001", "n3002", "l4001", "p5001", "a0001"]
    clients = [await stack.login(name) for name in logins]
    try:
        room = await shared_room(clients[0], *clients[1:])

        async def sender(client: AsyncClient) -> list[str]:
            sent = []
            for i in range(8):
                resp = await client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": f"load {i}"})
                assert isinstance(resp, RoomSendResponse), resp
                sent.append(resp.event_id)
            return sent

        accepted = [e for batch in await asyncio.gather(*(sender(c) for c in clients)) for e in batch]
    finally:
        for client in clients:
            await client.close()
    records = search(stack, "--room", room, "--action", "message.send")
    assert {r["object"] for r in records} >= set(accepted)
    # Each client sticks to one generic worker; eight of them use both.
    assert {r["process"] for r in records} == {w.name for w in workers.TOPOLOGY if "client" in w.resources}
    verified = audit_cli(stack, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_burns_run_once_on_the_background_worker(stack: RunningStack):
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        created = await nurse.room_create(name="burn on workers", invite=[doctor.user_id], initial_state=[
            {"type": "org.carematrix.room_class", "state_key": "", "content": {"class": "confidential"}},
        ])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        await doctor.join(room)
        sent = await nurse.room_send(room, "m.room.message", {
            "msgtype": "m.text", "body": "Door code 4471", "org.carematrix.burn_after_read": {"grace_seconds": 1},
        })
        assert isinstance(sent, RoomSendResponse), sent
        await doctor.room_read_markers(room, sent.event_id, sent.event_id)

        async def burnt() -> bool:
            got = await doctor.room_get_event(room, sent.event_id)
            return isinstance(got, RoomGetEventResponse) and not got.event.source.get("content")

        await eventually(burnt, timeout=60)
    finally:
        await nurse.close()
        await doctor.close()
    burns = [r for r in search(stack, "--action", "message.burn", "--room", room) if r["object"] == sent.event_id]
    assert [r["process"] for r in burns] == ["background1"]


class Supervising:
    """``carematrix up``'s supervision loop (Stack.supervise) running beside the test."""

    def __init__(self, stack: RunningStack) -> None:
        self.stop = False
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(stack,), daemon=True)

    def _run(self, stack: RunningStack) -> None:
        try:
            stack.stack.supervise(lambda: self.stop, poll=0.2)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def __enter__(self) -> Supervising:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop = True
        self.thread.join(10)


@pytest.mark.parametrize("victim", ["synapse-client1", "synapse-client2", "synapse", "redis"])
async def test_kill_9_under_load_is_restarted_and_no_accepted_message_is_lost(stack: RunningStack, victim: str):
    senders = [await stack.login(name) for name in ("d1001", "d1002", "n3001", "n3002")]
    reader = await stack.login("a0001")
    process = stack.stack.process(victim)
    outcome: dict[str, list] = {"accepted": [], "refused": [], "hl7_acked": []}
    stop = asyncio.Event()
    try:
        room = await shared_room(senders[0], *senders[1:], reader)

        async def admit_steadily() -> None:
            """The HIS keeps sending admissions; each one it got AA for must be posted once."""
            while not stop.is_set():
                patient = f"P{uuid.uuid4().hex[:6].upper()}"
                _, payload = hl7(
                    f"EVN|A01|{datetime.now():%Y%m%d%H%M}", f"PID|1||{patient}^^^RENHE^MR||王^建国||19540312|M",
                    "PV1|1|I|ICU^07^07||||D2001^陈^静",
                )
                try:
                    if ack_code(await send_mllp(stack, payload)) == "AA":
                        outcome["hl7_acked"].append(patient)
                except (OSError, AssertionError):
                    pass  # no ACK: the HIS sends it again later; not counted as accepted
                await asyncio.sleep(0.5)

        async def send_steadily(client: AsyncClient) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                resp = await client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": f"{client.user_id} {i}"})
                (outcome["accepted"] if isinstance(resp, RoomSendResponse) else outcome["refused"]).append(
                    resp.event_id if isinstance(resp, RoomSendResponse) else str(resp)
                )
                await asyncio.sleep(0.05)

        with Supervising(stack) as supervising:
            tasks = [asyncio.create_task(send_steadily(c)) for c in senders] + [asyncio.create_task(admit_steadily())]
            await asyncio.sleep(3)
            before = len(outcome["accepted"])
            old_pid = process.popen.pid if process.popen else None
            process.kill()
            await eventually(lambda: process.alive() and process.popen is not None and process.popen.pid != old_pid, timeout=30)
            await eventually(process.healthy, timeout=120)
            restarted_at = len(outcome["accepted"])
            # Clients resume: messages are accepted again after the restart.
            await eventually(lambda: len(outcome["accepted"]) >= restarted_at + 8, timeout=60)
            stop.set()
            await asyncio.gather(*tasks)
        assert not supervising.errors
        assert before > 0
        # Every accepted message is there for a reader, once, and on the audit trail.
        for event_id in outcome["accepted"]:
            got = await reader.room_get_event(room, event_id)
            assert isinstance(got, RoomGetEventResponse), (event_id, got)
        records = search(stack, "--room", room, "--action", "message.send")
        assert {r["object"] for r in records} >= set(outcome["accepted"])
        # Every admission the HIS got AA for is in the ward room, once.
        assert outcome["hl7_acked"]
        icu = (await reader.room_resolve_alias(f"#icu-team:{stack.server_name}")).room_id
        nurse = await stack.login("n3001")
        try:
            async def all_posted() -> bool:
                posted = await bodies(nurse, icu)
                return all(sum(p in b for b in posted) == 1 for p in outcome["hl7_acked"])

            await eventually(all_posted, timeout=60)
        finally:
            await nurse.close()
    finally:
        stop.set()
        for client in (*senders, reader):
            await client.close()
    verified = audit_cli(stack, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    print(f"{victim}: {len(outcome['accepted'])} messages accepted, {len(outcome['refused'])} refused while it "
          f"restarted ({sorted(set(outcome['refused']))[:3]}); {len(outcome['hl7_acked'])} HL7 admissions acknowledged")
