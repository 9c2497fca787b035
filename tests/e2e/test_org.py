"""The hospital's organisation in Matrix: real-name accounts, spaces and unit rooms from the
org policy, access that follows the tree, and org changes applied by sync."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nio import (
    JoinError,
    LoginError,
    ProfileSetDisplayNameError,
    RoomCreateError,
    RoomInviteError,
    RoomPutStateError,
    RoomSendResponse,
)

from carematrix.policy import load_policy
from carematrix.policy.rooms import ROOM_CLASS_EVENT
from carematrix_ops.http import HttpError, request_json
from tests.support import RunningStack, eventually, search, wait_for_event


def alias(stack: RunningStack, local: str) -> str:
    return f"#{local}:{stack.server_name}"


async def room_id(client, stack: RunningStack, local: str) -> str:
    return (await client.room_resolve_alias(alias(stack, local))).room_id


def as_bot(stack: RunningStack, method: str, path: str, body: dict | None = None):
    return request_json(method, stack.url + path, body, token=stack.deployment.secrets["as_token"])


def wait_for_org_sync(stack: RunningStack) -> None:
    """After a policy edit: wait until the appservice has synced the policy now on disk."""
    digest = load_policy(stack.policy_dir).digest
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = request_json("GET", f"{stack.deployment.settings.appservice_url}/_carematrix/health")
        sync = health.get("org_sync") or {}
        if sync.get("policy_digest") == digest:
            assert sync["errors"] == 0, health
            return
        time.sleep(0.3)
    raise AssertionError("org sync did not run for the edited policy")


@pytest.fixture
def staff_policy(stack: RunningStack) -> Iterator[Path]:
    path = stack.policy_dir / "staff.yaml"
    original = path.read_text(encoding="utf-8")
    yield path
    path.write_text(original, encoding="utf-8")
    wait_for_org_sync(stack)


async def test_icu_nurse_is_in_the_icu_room_and_colleagues_read_her(stack: RunningStack):
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        icu = await room_id(nurse, stack, "icu-team")
        assert icu in (await nurse.joined_rooms()).rooms
        await doctor.sync(timeout=0)
        sent = await nurse.room_send(icu, "m.room.message", {"msgtype": "m.text", "body": "Bed 4 needs a chest X-ray"})
        assert isinstance(sent, RoomSendResponse), sent
        await wait_for_event(doctor, icu, lambda e: e.get("content", {}).get("body") == "Bed 4 needs a chest X-ray")
        state = await nurse.room_get_state_event(icu, ROOM_CLASS_EVENT)
        assert state.content == {"class": "department", "unit": "icu"}
        topic = await nurse.room_get_state_event(icu, "m.room.topic")
        assert topic.content["topic"].startswith("[科室群 department room · 禁止转发 no forwarding · 图片水印 watermarked images")
    finally:
        await nurse.close()
        await doctor.close()


async def test_cardiologist_cannot_join_the_icu_room(stack: RunningStack):
    cardiologist = await stack.login("d1001")
    try:
        resp = await cardiologist.join(alias(stack, "icu-team"))
        assert isinstance(resp, JoinError), "a cardiologist joined the ICU room"
        assert resp.status_code == "M_FORBIDDEN"
        assert "Only 重症医学科 Intensive Care Unit staff may join this room" in resp.message
        assert "rule room_class.department.scope" in resp.message
    finally:
        await cardiologist.close()


async def test_even_a_room_admin_cannot_invite_a_cardiologist_into_the_icu_room(stack: RunningStack):
    icu_head = await stack.login("d2001")
    try:
        icu = await room_id(icu_head, stack, "icu-team")
        levels = as_bot(stack, "GET", f"/_matrix/client/v3/rooms/{icu}/state/m.room.power_levels")
        levels["users"][stack.user_id("d2001")] = 100
        as_bot(stack, "PUT", f"/_matrix/client/v3/rooms/{icu}/state/m.room.power_levels", levels)
        resp = await icu_head.room_invite(icu, stack.user_id("d1001"))
        assert isinstance(resp, RoomInviteError), "an outsider was invited into the ICU room"
        assert "Only 重症医学科 Intensive Care Unit staff may be invited to this room" in resp.message
        # The same room admin may not weaken the room either.
        for event_type, content, rule in [
            ("m.room.join_rules", {"join_rule": "public"}, "room_class.department.join_rules"),
            ("m.room.history_visibility", {"history_visibility": "world_readable"}, "room_class.department.history_visibility"),
            ("m.room.power_levels", {**levels, "kick": 0}, "room_class.department.power_levels"),
        ]:
            weakened = await icu_head.room_put_state(icu, event_type, content)
            assert isinstance(weakened, RoomPutStateError), f"{event_type} was weakened"
            assert f"rule {rule}" in weakened.message
    finally:
        await icu_head.close()


async def test_hospital_notice_reaches_every_member_of_staff(stack: RunningStack):
    policy = load_policy(stack.policy_dir)
    clients = {s.localpart: await stack.login(s.localpart) for s in policy.staff}
    try:
        for c in clients.values():
            await c.sync(timeout=0)
        body = "Visiting hours change from Monday: 15:00-19:00"
        sent = await clients["a0001"].room_send(stack.announcement_room, "m.room.message", {"msgtype": "m.text", "body": body})
        assert isinstance(sent, RoomSendResponse), sent
        await asyncio.gather(
            *(wait_for_event(c, stack.announcement_room, lambda e: e.get("content", {}).get("body") == body) for c in clients.values())
        )
    finally:
        for c in clients.values():
            await c.close()


async def test_staff_cannot_change_their_real_name_and_are_told_the_rule(stack: RunningStack):
    nurse = await stack.login("n3001")
    try:
        resp = await nurse.set_displayname("Night Owl")
        assert isinstance(resp, ProfileSetDisplayNameError), "a display name was changed"
        assert resp.status_code == "M_FORBIDDEN"
        # The real-name policy and the rule, Chinese first with English beside it.
        message = resp.message
        assert message.index("实名制") < message.index("real-name policy") < message.index("[rule identity.real_name]"), message
        assert (await nurse.get_displayname()).displayname == "刘洋 Liu Yang · 重症医学科 Intensive Care Unit · 护师 Nurse Practitioner"
    finally:
        await nurse.close()
    denials = search(stack, "--actor", stack.user_id("n3001"), "--action", "policy.denied")
    assert any(d["rule"] == "identity.real_name" and d["object"] == "display name" and d["room"] is None for d in denials), denials


async def test_a_per_room_nickname_is_refused_with_the_rule(stack: RunningStack):
    nurse = await stack.login("n3001")
    try:
        icu = await room_id(nurse, stack, "icu-team")
        me = stack.user_id("n3001")
        current = await nurse.room_get_state_event(icu, "m.room.member", me)
        resp = await nurse.room_put_state(icu, "m.room.member", {**current.content, "displayname": "Night Owl"}, state_key=me)
        assert isinstance(resp, RoomPutStateError), "a per-room nickname was accepted"
        assert resp.status_code == "M_FORBIDDEN"
        assert "real name" in resp.message and "rule identity.real_name" in resp.message
        after = await nurse.room_get_state_event(icu, "m.room.member", me)
        assert after.content["displayname"] == "刘洋 Liu Yang · 重症医学科 Intensive Care Unit · 护师 Nurse Practitioner"
    finally:
        await nurse.close()


async def test_new_rooms_get_a_class_and_cannot_go_in_the_directory(stack: RunningStack):
    doctor = await stack.login("d1002")
    try:
        from nio import RoomVisibility

        public = await doctor.room_create(name="Open journal club", visibility=RoomVisibility.public)
        assert isinstance(public, RoomCreateError)
        assert "cannot be published in this hospital's room directory" in public.message
        assert "[rule room.directory]" in public.message
        room = await doctor.room_create(name="Journal club", topic="Papers on heart failure")
        assert not isinstance(room, RoomCreateError), room
        # Nor can it be listed there later.
        with pytest.raises(HttpError) as listed:
            request_json(
                "PUT", f"{stack.url}/_matrix/client/v3/directory/list/room/{room.room_id}",
                {"visibility": "public"}, token=doctor.access_token,
            )
        assert listed.value.status == 403
        assert "cannot be published in this hospital's room directory. [rule room.directory]" in listed.value.body["error"]
        state = await doctor.room_get_state_event(room.room_id, ROOM_CLASS_EVENT)
        assert state.content["class"] == "discussion"
        topic = await doctor.room_get_state_event(room.room_id, "m.room.topic")
        assert topic.content["topic"] == "[讨论组 discussion · 保留365天 kept 365d] Papers on heart failure"
    finally:
        await doctor.close()


async def test_a_direct_chat_stays_between_two_people(stack: RunningStack):
    doctor = await stack.login("d1001")
    try:
        dm = await doctor.room_create(is_direct=True, invite=[stack.user_id("n3002")])
        assert not isinstance(dm, RoomCreateError), dm
        state = await doctor.room_get_state_event(dm.room_id, ROOM_CLASS_EVENT)
        assert state.content["class"] == "direct"
        third = await doctor.room_invite(dm.room_id, stack.user_id("p5001"))
        assert isinstance(third, RoomInviteError)
        assert "limited to 2 people" in third.message
    finally:
        await doctor.close()


async def test_transferred_nurse_moves_from_the_ward_room_to_the_icu_room(stack: RunningStack, staff_policy: Path):
    text = staff_policy.read_text(encoding="utf-8")
    moved = text.replace("units: [cardiology-ward-5a]", "units: [icu]")
    assert moved != text
    staff_policy.write_text(moved, encoding="utf-8")
    wait_for_org_sync(stack)
    nurse = await stack.login("n3002")
    try:
        rooms = set((await nurse.joined_rooms()).rooms)
        assert await room_id(nurse, stack, "icu-team") in rooms
        assert await room_id(nurse, stack, "icu-notices") in rooms
        for old in ("cardiology-ward-5a-team", "cardiology-team", "cardiology-notices"):
            assert await room_id(nurse, stack, old) not in rooms, f"still in #{old}"
        assert await room_id(nurse, stack, "announcements") in rooms
        assert "重症医学科" in (await nurse.get_displayname()).displayname
    finally:
        await nurse.close()


async def test_removed_member_can_no_longer_log_in(stack: RunningStack, staff_policy: Path):
    from nio import AsyncClient

    text = staff_policy.read_text(encoding="utf-8")
    start = text.index("  - staff_number: P5001")
    staff_policy.write_text(text[:start], encoding="utf-8")
    wait_for_org_sync(stack)
    client = AsyncClient(stack.url, stack.user_id("p5001"))
    try:
        resp = await client.login(stack.deployment.secrets["demo_password"])
        assert isinstance(resp, LoginError), "a removed member could still log in"
    finally:
        await client.close()

    def parted() -> bool:
        # Synapse parts a deactivated account from its rooms in the background.
        members = as_bot(stack, "GET", f"/_matrix/client/v3/rooms/{stack.announcement_room}/joined_members")["joined"]
        return stack.user_id("p5001") not in members

    await eventually(parted)


def run_cli(stack: RunningStack, *args: str):
    import os
    import subprocess
    import sys

    cli = str(Path(sys.executable).parent / "carematrix")
    return subprocess.run(
        [cli, *args, "--data-dir", str(stack.deployment.settings.data_dir)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )


async def test_org_sync_dry_run_shows_drift_and_sync_repairs_it(stack: RunningStack):
    icu = as_bot(stack, "GET", f"/_matrix/client/v3/directory/room/%23icu-team:{stack.server_name}")["room_id"]
    nurse = stack.user_id("n3001")
    # Drift on the Matrix side (no policy change, so nothing syncs by itself).
    as_bot(stack, "POST", f"/_matrix/client/v3/rooms/{icu}/kick", {"user_id": nurse, "reason": "test drift"})

    def members() -> set[str]:
        return set(as_bot(stack, "GET", f"/_matrix/client/v3/rooms/{icu}/joined_members")["joined"])

    dry = run_cli(stack, "org", "sync", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("Dry run: these changes would be made")
    assert "+ @n3001 joins #icu-team" in dry.stdout
    assert nurse not in members(), "a dry run changed the room"

    real = run_cli(stack, "org", "sync")
    assert real.returncode == 0, real.stderr
    assert "+ @n3001 joins #icu-team" in real.stdout
    assert nurse in members()
    again = run_cli(stack, "org", "sync", "--dry-run")
    assert "(nothing to change)" in again.stdout, again.stdout


POPULATE = "/_synapse/client/carematrix/org/joins"


def _populating_icu_room(stack: RunningStack, name: str) -> str:
    """An ICU department room as org sync creates one: still publicly joinable."""
    body = {
        "name": name,
        "preset": "private_chat",
        "creation_content": {"m.federate": False},
        "initial_state": [
            {"type": ROOM_CLASS_EVENT, "state_key": "", "content": {"class": "department", "unit": "icu"}},
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "public"}},
        ],
    }
    return as_bot(stack, "POST", "/_matrix/client/v3/createRoom", body)["room_id"]


async def test_org_sync_bulk_join_adds_only_staff_in_scope_under_their_real_names(stack: RunningStack):
    room = _populating_icu_room(stack, "ICU bulk join")
    result = as_bot(stack, "POST", POPULATE, {
        "room_id": room,
        "user_ids": [stack.user_id("n3001"), stack.user_id("d2001"), stack.user_id("d1001"),
                     stack.user_id("nobody9"), stack.user_id("n3001")],
    })
    assert sorted(result["joined"]) == sorted([stack.user_id("n3001"), stack.user_id("d2001")])
    assert "Only 重症医学科 Intensive Care Unit staff may join this room" in result["refused"][stack.user_id("d1001")]
    assert "no active account" in result["refused"][stack.user_id("nobody9")]

    joined = as_bot(stack, "GET", f"/_matrix/client/v3/rooms/{room}/joined_members")["joined"]
    assert stack.user_id("d1001") not in joined
    assert joined[stack.user_id("n3001")]["display_name"] == "刘洋 Liu Yang · 重症医学科 Intensive Care Unit · 护师 Nurse Practitioner"

    # The nurse sees the room and can talk in it at once.
    nurse = await stack.login("n3001")
    try:
        sent = await nurse.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "bulk-joined and here"})
        assert isinstance(sent, RoomSendResponse), sent
    finally:
        await nurse.close()

    # Asking again changes nothing.
    again = as_bot(stack, "POST", POPULATE, {"room_id": room, "user_ids": [stack.user_id("n3001")]})
    assert again["joined"] == [] and again["already"] == [stack.user_id("n3001")]

    # An auditor finds the join and the refusal.
    joins = search(stack, "--actor", stack.user_id("d2001"), "--room", room, "--action", "room.member.join")
    assert len(joins) == 1 and joins[0]["outcome"] == "success"
    denials = search(stack, "--actor", stack.user_id("d1001"), "--room", room, "--action", "policy.denied")
    assert [r["rule"] for r in denials] == ["room_class.department.scope"]


async def test_org_sync_bulk_join_is_for_the_bot_and_for_rooms_being_populated_only(stack: RunningStack):
    room = _populating_icu_room(stack, "ICU bulk join guard")
    nurse = await stack.login("n3001")
    try:
        resp = await nurse.send(
            "POST", f"{POPULATE}?access_token={nurse.access_token}",
            json.dumps({"room_id": room, "user_ids": [stack.user_id("n3001")]}),
        )
        assert resp.status == 403
        assert "Only org sync" in (await resp.json())["error"]
    finally:
        await nurse.close()

    locked = as_bot(stack, "GET", f"/_matrix/client/v3/directory/room/%23icu-team:{stack.server_name}")["room_id"]
    with pytest.raises(HttpError) as refused:
        as_bot(stack, "POST", POPULATE, {"room_id": locked, "user_ids": [stack.user_id("d2001")]})
    assert refused.value.status == 409 and refused.value.body["errcode"] == "M_BAD_STATE"

    with pytest.raises(HttpError) as malformed:
        as_bot(stack, "POST", POPULATE, {"room_id": room, "user_ids": "n3001"})
    assert malformed.value.status == 400 and "user_ids" in malformed.value.body["error"]
