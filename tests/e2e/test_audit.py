"""The audit trail end to end: what staff do is on record, auditors (only) can find it,
the export is valid FHIR, tampering is detected, and a crash loses no acknowledged record."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from nio import (
    AsyncClient,
    JoinError,
    RoomCreateResponse,
    RoomPreset,
    RoomSendResponse,
    UploadResponse,
)

from carematrix_ops.audit_db import connect
from tests.images import photo
from tests.support import CLI, RunningStack, audit_cli, search, start_stack, stop_stack

# Also run on the worker deployment (tests/conftest.py).
pytestmark = pytest.mark.worker_pass


def db_target(stack: RunningStack) -> str:
    s = stack.deployment.settings
    return s.db_url if s.database == "postgres" else str(stack.deployment.paths.sqlite_db)


async def test_login_send_download_and_denial_are_all_found_by_an_auditor(stack: RunningStack):
    nurse = await stack.login("n3001")
    icu_doctor = await stack.login("d2001")
    cardiologist = await stack.login("d1001")
    try:
        icu = (await nurse.room_resolve_alias(f"#icu-team:{stack.server_name}")).room_id
        data = photo(7, (400, 300), "PNG")
        upload, _ = await nurse.upload(io.BytesIO(data), content_type="image/png", filename="scan.png", filesize=len(data))
        assert isinstance(upload, UploadResponse), upload
        sent = await nurse.room_send(icu, "m.room.message", {"msgtype": "m.image", "body": "scan.png", "url": upload.content_uri})
        assert isinstance(sent, RoomSendResponse), sent
        # A member of the ward room gets the (watermarked) scan; an outsider is refused.
        download = await icu_doctor.download(upload.content_uri)
        assert getattr(download, "body", None) is not None, download
        refused = await cardiologist.download(upload.content_uri)
        assert getattr(refused, "body", None) is None, "an outsider downloaded a protected scan"
        denied = await cardiologist.join(f"#icu-team:{stack.server_name}")
        assert isinstance(denied, JoinError)
    finally:
        await nurse.close()
        await icu_doctor.close()
        await cardiologist.close()

    nurse_trail = search(stack, "--actor", stack.user_id("n3001"))
    actions = {(r["action"], r["object"]) for r in nurse_trail}
    assert ("auth.login", stack.user_id("n3001")) in actions
    send = next(r for r in nurse_trail if r["action"] == "message.send" and r["object"] == sent.event_id)
    assert send["room"] == icu and send["details"]["media"] == upload.content_uri
    assert "scan.png" not in json.dumps(nurse_trail), "message text reached the audit trail"
    uploads = [r for r in nurse_trail if r["action"] == "media.upload" and r["object"] == upload.content_uri]
    assert [(u["outcome"], u["details"]["size"], u["details"]["content_type"]) for u in uploads] == [("success", len(data), "image/png")]

    doctor_trail = search(stack, "--actor", stack.user_id("d2001"))
    fetched = next(r for r in doctor_trail if r["action"] == "media.download" and r["object"] == upload.content_uri and r["room"] == icu)
    assert fetched["details"]["protected"] == "watermark"

    cardio_trail = search(stack, "--actor", stack.user_id("d1001"))
    joins = [r["rule"] for r in cardio_trail if r["action"] == "policy.denied"]
    assert "room_class.department.scope" in joins
    assert all(r["outcome"] == "denied" for r in cardio_trail if r["action"] == "policy.denied")
    # The refused download is the file's one record, denied with its rule.
    refusal = [(r["action"], r["outcome"], r["rule"]) for r in cardio_trail if r["object"] == upload.content_uri]
    assert refusal == [("media.download", "denied", "protection.media_members")]


async def test_ward_notes_sent_at_once_into_new_rooms_are_all_accepted_and_on_record(stack: RunningStack):
    """Staff posting ward notes in quick succession into rooms they have just created: every
    note goes through, none is refused as "the hospital policy could not be checked"
    (internal.error), and each is on record. On PostgreSQL the send check's transaction once
    read before it locked the audit chain, so concurrent sends failed to serialize until
    Synapse's retries ran out and the note was refused."""
    nurse = await stack.login("n3001")
    try:
        rooms = []
        for i in range(4):
            created = await nurse.room_create(name=f"ward notes {i}", preset=RoomPreset.private_chat)
            assert isinstance(created, RoomCreateResponse), created
            rooms.append(created.room_id)
        in_flight = asyncio.Semaphore(16)  # what a busy ward's clients have in flight together
        accepted: dict[str, str] = {}  # event ID -> room
        refused: list[str] = []

        async def note(i: int) -> None:
            room = rooms[i % len(rooms)]
            body = f"患者{i}号床血钾{3 + i % 5}.{i % 10}mmol/L，请复查 bed {i}: repeat the potassium"
            async with in_flight:
                resp = await nurse.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})
            if isinstance(resp, RoomSendResponse):
                accepted[resp.event_id] = room
            else:
                refused.append(f"note {i}: {resp}")

        await asyncio.gather(*(note(i) for i in range(120)))
        assert refused == [], f"{len(refused)} of 120 notes refused, first: {refused[0]}"
    finally:
        await nurse.close()
    recorded = {
        r["object"]: r["room"]
        for room in rooms
        for r in search(stack, "--room", room, "--action", "message.send")
    }
    assert {e: recorded.get(e) for e in accepted} == accepted


async def test_failed_login_is_recorded_with_user_device_and_address(stack: RunningStack):
    client = AsyncClient(stack.url, stack.user_id("n3002"))
    try:
        resp = await client.login("wrong-password", device_name="stolen-laptop")
        assert resp.__class__.__name__ == "LoginError"
    finally:
        await client.close()
    failed = [r for r in search(stack, "--actor", stack.user_id("n3002"), "--action", "auth.login_failed")]
    assert failed, "the failed login is not on record"
    assert failed[0]["outcome"] == "denied" and failed[0]["source"] == "127.0.0.1"
    assert "wrong-password" not in json.dumps(failed)
    ok = search(stack, "--actor", stack.user_id("n3001"), "--action", "auth.login")
    assert ok and ok[0]["details"]["device"] and ok[0]["source"] == "127.0.0.1"


def test_non_auditor_cannot_search_and_the_attempt_is_recorded(stack: RunningStack):
    refused = audit_cli(stack, "search", "--actor", stack.user_id("n3001"), login="d1002")
    assert refused.returncode == 1
    assert "Only staff with the 'auditor' role may search the audit trail" in refused.stderr
    queries = search(stack, "--action", "audit.query", "--actor", stack.user_id("d1002"))
    assert queries and queries[0]["outcome"] == "denied"
    # ... and the auditor's own searches are on record too.
    assert search(stack, "--action", "audit.query", "--actor", stack.user_id("a0002"))


def test_an_auditor_finds_a_person_by_name_or_staff_number_and_is_told_when_nobody_or_several_match(
    stack: RunningStack,
):
    """An auditor looking into what 李伟 did types his name or staff number, not a Matrix ID:
    the same records as by his ID. A name that matches nobody, or several, is said, never
    answered with an empty list (which read as "he did nothing")."""
    by_id = {r["seq"] for r in search(stack, "--actor", stack.user_id("d1001"))}
    assert by_id, "d1001 has logged in by now"
    for typed in ("李伟", "Li Wei", "liwei", "D1001", "d1001"):
        assert {r["seq"] for r in search(stack, "--actor", typed)} >= by_id, typed
    nobody = audit_cli(stack, "search", "--actor", "王五", "--format", "json", login="a0002")
    assert nobody.returncode == 1 and "Nobody on the staff list is named or numbered '王五'" in nobody.stderr
    assert nobody.stdout == ""
    several = audit_cli(stack, "search", "--actor", "Li", "--format", "json", login="a0002")
    assert several.returncode == 1 and "names" in several.stderr and "D1001" in several.stderr, several.stderr
    assert "N3001" in several.stderr  # 刘洋 Liu Yang: the auditor sees whom "Li" could mean
    # A Chinese patient ID is a filter like any other (it failed with a 500 before).
    assert search(stack, "--patient", "住院号-0042") == []
    # The search is on record with the person it resolved to.
    queries = search(stack, "--action", "audit.query", "--actor", "a0002")
    assert any(q["details"].get("actor") == stack.user_id("d1001") for q in queries)


def test_search_from_a_script_reads_the_password_piped_in_and_says_when_there_is_none(stack: RunningStack):
    """A job runner has no terminal: the password comes on standard input, or a clear error."""
    env = {k: v for k, v in os.environ.items() if k not in ("CAREMATRIX_PASSWORD", "CAREMATRIX_TOKEN")}
    command = [CLI, "audit", "search", "--login", "a0002", "--action", "auth.login", "--format", "json",
               "--data-dir", str(stack.deployment.settings.data_dir)]
    piped = subprocess.run(command, input=stack.deployment.secrets["demo_password"] + "\n",
                           capture_output=True, text=True, timeout=300, env=env)
    assert piped.returncode == 0, piped.stderr
    assert any(r["action"] == "auth.login" for r in json.loads(piped.stdout))
    empty = subprocess.run(command, input="", capture_output=True, text=True, timeout=300, env=env)
    assert empty.returncode == 2
    assert "CAREMATRIX_PASSWORD" in empty.stderr and "Traceback" not in empty.stderr


def test_fhir_export_is_a_valid_bundle_of_audit_events(stack: RunningStack):
    from fhir.resources.R4B.bundle import Bundle

    result = audit_cli(stack, "search", "--action", "auth.", "--format", "fhir")
    assert result.returncode == 0, result.stderr
    bundle = Bundle.model_validate_json(result.stdout)
    assert bundle.entry, "no AuditEvents exported"
    assert {e.resource.get_resource_type() for e in bundle.entry} == {"AuditEvent"}


def test_verify_is_ok_and_then_names_the_edited_record(stack: RunningStack):
    ok = audit_cli(stack, "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("audit log OK:")
    with connect(db_target(stack)) as db, db.transaction() as txn:
        txn.execute("SELECT seq, actor FROM carematrix_audit_log WHERE action = 'auth.login' ORDER BY seq LIMIT 1")
        seq, actor = txn.fetchone()
        txn.execute(f"UPDATE carematrix_audit_log SET actor = 'someone-else' WHERE seq = {int(seq)}")
    try:
        broken = audit_cli(stack, "verify")
        assert broken.returncode == 1
        assert f"record {seq}" in broken.stdout, broken.stdout
    finally:
        with connect(db_target(stack)) as db, db.transaction() as txn:
            txn.execute(f"UPDATE carematrix_audit_log SET actor = '{actor}' WHERE seq = {int(seq)}")
    assert audit_cli(stack, "verify").returncode == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_kill_9_during_sends_loses_no_acknowledged_record(backend: str, tmp_path: Path):
    running = start_stack(backend, tmp_path)
    acked: list[str] = []
    try:
        client = AsyncClient(running.url, running.user_id("a0001"))
        await client.login(running.deployment.secrets["demo_password"])
        room = running.announcement_room
        gate = asyncio.Semaphore(4)  # a few sends in flight when the kill lands

        async def send(i: int) -> None:
            async with gate:
                if not running.stack.synapse.alive():
                    return
                try:
                    resp = await asyncio.wait_for(
                        client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": f"load {i}"}), 10
                    )
                except Exception:  # the server died under this request: not acknowledged
                    return
                if isinstance(resp, RoomSendResponse):
                    acked.append(resp.event_id)
                if len(acked) == 100:
                    running.stack.synapse.kill()  # SIGKILL, with sends still in flight

        await asyncio.gather(*(send(i) for i in range(300)))
        await client.close()
        assert not running.stack.synapse.alive()
        assert len(acked) >= 100
        running.stack.restart_synapse()
        result = subprocess.run(
            [CLI, "audit", "verify", "--data-dir", str(running.deployment.settings.data_dir)],
            capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        with connect(db_target(running)) as db, db.transaction(read_only=True) as txn:
            txn.execute("SELECT object FROM carematrix_audit_log WHERE action = 'message.send'")
            recorded = {row[0] for row in txn.fetchall()}
        missing = [e for e in acked if e not in recorded]
        assert not missing, f"{len(missing)} acknowledged sends have no audit record"
    finally:
        stop_stack(running)
