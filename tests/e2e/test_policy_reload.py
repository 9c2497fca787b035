"""Admins edit policies/*.yaml on a running system: valid edits apply without a restart,
broken edits are reported with file and line and the last good policy stays in force."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nio import RoomSendError, RoomSendResponse

from carematrix.policy import load_policy
from carematrix_ops.http import request_json
from tests.support import RunningStack, eventually


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

    synapse_log = stack.deployment.paths.synapse_log

    def synapse_reported() -> bool:
        return f"policy edit rejected: {rooms_policy}:5:" in synapse_log.read_text(encoding="utf-8")

    await eventually(synapse_reported)
    assert _synapse_policy(stack) | {"worker": None} == {
        "digest": good_digest,
        "worker": None,
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
