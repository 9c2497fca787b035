"""Admins edit policies/*.yaml on a running system: valid edits apply without a restart,
broken edits are reported with file and line and the last good policy stays in force."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nio import RoomSendError, RoomSendResponse

from carematrix.policy import load_policy
from carematrix_ops.http import request_json
from tests.clinical_support import hl7, send_many
from tests.support import RunningStack, eventually

# Also run on the worker deployment (tests/conftest.py).
pytestmark = pytest.mark.worker_pass

PATIENT = "P7R3L0"  # updates for one made-up patient, sent while the policy reloads


@pytest.fixture
def rooms_policy(stack: RunningStack) -> Iterator[Path]:
    """The running stack's rooms.yaml, restored after the test (the homeserver is shared)."""
    path = stack.policy_dir / "rooms.yaml"
    original = path.read_text(encoding="utf-8")
    good = load_policy(stack.policy_dir).digest
    yield path
    path.write_text(original, encoding="utf-8")
    wait_until_in_force(stack, good)


def _appservice_health(stack: RunningStack) -> dict:
    return request_json("GET", f"{stack.deployment.settings.appservice_url}/_carematrix/health")


def _synapse_policy(stack: RunningStack) -> dict:
    return request_json("GET", f"{stack.url}/_synapse/client/carematrix/policy")


def wait_until_in_force(stack: RunningStack, digest: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        hs, asv = _synapse_policy(stack), _appservice_health(stack)
        rejected = hs["last_edit_rejected"] or "policy_rejected_edit" in asv
        if hs["digest"] == asv["policy_digest"] == digest and not rejected:
            return
        time.sleep(0.2)
    raise AssertionError("restored policy did not come back into force")


def _post(client, room: str, body: str):
    return client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})


async def test_granting_post_rights_in_the_policy_applies_without_restart(stack: RunningStack, rooms_policy: Path):
    doctor = await stack.login("d1001")
    try:
        refused = await _post(doctor, stack.announcement_room, "before the edit")
        assert isinstance(refused, RoomSendError)
        text = rooms_policy.read_text(encoding="utf-8")
        rooms_policy.write_text(text.replace("roles: [announcer]\n    create", "roles: [announcer]\n      staff: [D1001]\n    create", 1), encoding="utf-8")

        async def doctor_can_post() -> bool:
            return isinstance(await _post(doctor, stack.announcement_room, "after the edit"), RoomSendResponse)

        await eventually(doctor_can_post)
    finally:
        await doctor.close()


async def test_broken_policy_edit_keeps_the_last_good_policy_in_force(stack: RunningStack, rooms_policy: Path):
    good_digest = _appservice_health(stack)["policy_digest"]
    synapse_log = stack.deployment.paths.synapse_log
    # The stack is shared: earlier tests may have logged a rejection of this same file.
    log_start = synapse_log.stat().st_size
    # A typo an admin could make: 'post' loses its indentation, and a role that does not exist.
    rooms_policy.write_text(
        "room_classes:\n  announcement:\n    description: x\n    post:\n      roles: [everyone]\n",
        encoding="utf-8",
    )

    def rejection_reported() -> list[str]:
        return _appservice_health(stack).get("policy_rejected_edit", [])

    errors = await eventually(rejection_reported)
    assert any(f"{rooms_policy}:5:" in e and "unknown role 'everyone'" in e for e in errors), errors
    assert _appservice_health(stack)["policy_digest"] == good_digest

    def synapse_reported() -> bool:
        with synapse_log.open("rb") as log:
            log.seek(log_start)
            return f"policy edit rejected: {rooms_policy}:5:" in log.read().decode("utf-8", "replace")

    await eventually(synapse_reported)
    status = _synapse_policy(stack)
    assert {k: status[k] for k in ("digest", "last_edit_rejected", "rejected_error_count")} == {
        "digest": good_digest,
        "last_edit_rejected": True,
        "rejected_error_count": 1,
    }
    doctor = await stack.login("d1002")
    announcer = await stack.login("a0001")
    try:
        still_refused = await _post(doctor, stack.announcement_room, "the broken policy must not open this up")
        assert isinstance(still_refused, RoomSendError)
        assert "rule room_class.announcement.post" in still_refused.message
        still_allowed = await _post(announcer, stack.announcement_room, "announcers still post")
        assert isinstance(still_allowed, RoomSendResponse), still_allowed
    finally:
        await doctor.close()
        await announcer.close()


async def test_invalid_yaml_syntax_is_reported_with_its_line(stack: RunningStack, rooms_policy: Path):
    rooms_policy.write_text("room_classes:\n  announcement: {post: [\n", encoding="utf-8")

    def rejection_reported() -> list[str]:
        return _appservice_health(stack).get("policy_rejected_edit", [])

    errors = await eventually(rejection_reported)
    assert any(e.startswith(f"{rooms_policy}:") and "invalid YAML" in e for e in errors), errors


async def test_messages_and_hl7_flow_on_while_an_edit_is_reloaded_and_it_applies_at_once(
    stack: RunningStack, rooms_policy: Path
):
    """Reloads parse off the event loop: chat checks and the HIS's ACKs carry on meanwhile,
    each check sees the old policy or the new one (never a failed check), and once the
    edit is in force it stays."""
    doctor = await stack.login("d1001")
    stop = asyncio.Event()
    posts: list[object] = []
    acks: list[str] = []

    async def keep_posting() -> None:
        while not stop.is_set():
            posts.append(await _post(doctor, stack.announcement_room, f"post {len(posts)} while the policy reloads"))

    async def keep_sending_hl7() -> None:
        while not stop.is_set():
            _, update = hl7(f"PID|1||{PATIENT}^^^RENHE^MR||王^建国||19540312|M", "PV1|1|I|ICU^07^07", kind="ADT^A08")
            acks.extend(await send_many(stack, [update]))

    tasks = [asyncio.create_task(keep_posting()), asyncio.create_task(keep_sending_hl7())]
    try:
        await eventually(lambda: len(posts) >= 2 and len(acks) >= 2)
        text = rooms_policy.read_text(encoding="utf-8")
        rooms_policy.write_text(text.replace("roles: [announcer]\n    create", "roles: [announcer]\n      staff: [D1001]\n    create", 1), encoding="utf-8")
        edited = load_policy(stack.policy_dir).digest
        await eventually(lambda: _synapse_policy(stack)["digest"] == _appservice_health(stack)["policy_digest"] == edited)
        seen = len(posts)
        await eventually(lambda: len(posts) >= seen + 2 and len(acks) >= 4)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await doctor.close()

    def kind(result: object) -> str:
        if isinstance(result, RoomSendResponse):
            return "sent"
        assert isinstance(result, RoomSendError) and "rule room_class.announcement.post" in result.message, result
        return "refused"

    # Both processes had the edit parsed by a child process (a failed one would say so,
    # and the parse would have run in the process itself).
    for log in (stack.deployment.paths.synapse_log, stack.deployment.paths.appservice_log):
        text = log.read_text(encoding="utf-8")
        assert "parsed in a child process in " in text, log
        assert "in a child process failed" not in text, log

    kinds = [kind(p) for p in posts]
    assert kinds[0] == "refused" and kinds[-1] == "sent"
    assert "refused" not in kinds[kinds.index("sent"):], kinds  # applied once, never undone
    assert set(acks) == {"AA"}, acks
