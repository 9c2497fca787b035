"""Announcement channels: everyone in scope reads, only announcers post (policy room class)."""

from __future__ import annotations

import uuid

import pytest
from nio import RoomCreateError, RoomPutStateError, RoomSendError, RoomSendResponse

from carematrix.policy.rooms import ROOM_CLASS_EVENT
from tests.support import RunningStack, wait_for_event

# Also run on the worker deployment (tests/conftest.py).
pytestmark = pytest.mark.worker_pass


def _text(body: str) -> dict:
    return {"msgtype": "m.text", "body": body}


async def test_every_demo_staff_member_is_in_the_announcement_channel(stack: RunningStack):
    nurse = await stack.login("n3001")
    try:
        resp = await nurse.joined_rooms()
        assert stack.announcement_room in resp.rooms
        name = await nurse.room_get_state_event(stack.announcement_room, "m.room.name")
        assert "Hospital Announcements" in name.content["name"]
    finally:
        await nurse.close()


async def test_announcer_notice_reaches_a_nurse(stack: RunningStack):
    announcer = await stack.login("a0001")
    nurse = await stack.login("n3001")
    try:
        await nurse.sync(timeout=0)
        body = f"Fire drill at 14:00 in building B ({uuid.uuid4().hex[:6]})"
        sent = await announcer.room_send(stack.announcement_room, "m.room.message", _text(body))
        assert isinstance(sent, RoomSendResponse), sent
        event = await wait_for_event(nurse, stack.announcement_room, lambda e: e.get("content", {}).get("body") == body)
        assert event["sender"] == stack.user_id("a0001")
    finally:
        await announcer.close()
        await nurse.close()


async def test_doctor_without_announcer_role_cannot_post_and_is_told_why(stack: RunningStack):
    doctor = await stack.login("d1001")
    try:
        sent = await doctor.room_send(stack.announcement_room, "m.room.message", _text("hello all"))
        assert isinstance(sent, RoomSendError), "a non-announcer's post was accepted"
        assert sent.status_code == "M_FORBIDDEN"
        assert "Only staff with the role 'announcer' may post here" in sent.message
        assert "rule room_class.announcement.post" in sent.message
    finally:
        await doctor.close()


async def test_staff_can_acknowledge_an_announcement_with_a_reaction(stack: RunningStack):
    announcer = await stack.login("a0001")
    pharmacist = await stack.login("p5001")
    try:
        notice = await announcer.room_send(stack.announcement_room, "m.room.message", _text("New antibiotic formulary from Monday"))
        assert isinstance(notice, RoomSendResponse), notice
        reaction = {"m.relates_to": {"rel_type": "m.annotation", "event_id": notice.event_id, "key": "👍"}}
        ack = await pharmacist.room_send(stack.announcement_room, "m.reaction", reaction)
        assert isinstance(ack, RoomSendResponse), ack
    finally:
        await announcer.close()
        await pharmacist.close()


async def test_staff_cannot_change_the_class_of_the_announcement_room(stack: RunningStack):
    announcer = await stack.login("a0001")
    try:
        resp = await announcer.room_put_state(stack.announcement_room, ROOM_CLASS_EVENT, {"class": "discussion"})
        assert isinstance(resp, RoomPutStateError), "the room class was changed by a user"
        assert "rule room_class.immutable" in resp.message
        state = await announcer.room_get_state_event(stack.announcement_room, ROOM_CLASS_EVENT)
        assert state.content["class"] == "announcement"
    finally:
        await announcer.close()


async def test_announcement_channels_come_from_the_org_not_from_users(stack: RunningStack):
    announcer = await stack.login("a0001")
    initial = [{"type": ROOM_CLASS_EVENT, "state_key": "", "content": {"class": "announcement", "unit": "renhe"}}]
    try:
        denied = await announcer.room_create(name="My own notices", initial_state=initial)
        assert isinstance(denied, RoomCreateError), "a user created an announcement room"
        assert "Only the CareMatrix service may create announcement rooms" in denied.message
    finally:
        await announcer.close()


async def test_class_cannot_be_added_to_an_existing_room_by_a_non_announcer(stack: RunningStack):
    doctor = await stack.login("d2001")
    try:
        room = await doctor.room_create(name="ICU handover")
        assert not isinstance(room, RoomCreateError), room
        resp = await doctor.room_put_state(room.room_id, ROOM_CLASS_EVENT, {"class": "announcement"})
        assert isinstance(resp, RoomPutStateError), "a doctor turned a room into an announcement room"
        sent = await doctor.room_send(room.room_id, "m.room.message", _text("handover at 08:00"))
        assert isinstance(sent, RoomSendResponse), "an ordinary room stopped accepting posts"
    finally:
        await doctor.close()
