"""Access follows the org tree; rooms stay inside their class; new rooms get a class."""

from __future__ import annotations

from carematrix.policy import load_policy
from carematrix.policy.rooms import ROOM_CLASS_EVENT, RoomClassState
from carematrix.rules.creation import decide_create
from carematrix.rules.directory import decide_publish
from carematrix.rules.membership import decide_membership
from carematrix.rules.room_class import decide_state_change
from tests.paths import DEMO_POLICY_DIR

P = load_policy(DEMO_POLICY_DIR)
ICU_ROOM = RoomClassState("department", "icu")
CARDIO_ROOM = RoomClassState("department", "cardiology")
icu_nurse, cardiologist, ward_nurse = (P.staff_for_localpart(x) for x in ("n3001", "d1001", "n3002"))


def test_icu_staff_join_the_icu_room_and_cardiologists_do_not():
    assert decide_membership(P, ICU_ROOM, icu_nurse, False, "join").allowed
    verdict = decide_membership(P, ICU_ROOM, cardiologist, False, "join")
    assert not verdict.allowed and verdict.rule == "room_class.department.scope"
    assert verdict.reason.startswith("只有重症医学科 Intensive Care Unit 的员工可以加入此房间")
    assert "Only 重症医学科 Intensive Care Unit staff may join this room" in verdict.reason


def test_ward_staff_belong_to_the_department_above_their_ward():
    assert decide_membership(P, CARDIO_ROOM, ward_nurse, False, "invite").allowed


def test_scoped_room_without_a_valid_unit_admits_nobody():
    assert not decide_membership(P, RoomClassState("department", "nowhere"), icu_nurse, False, "join").allowed


def test_direct_chats_hold_two():
    room = RoomClassState("direct")
    assert decide_membership(P, room, icu_nurse, False, "invite", member_count=1).allowed
    assert not decide_membership(P, room, ward_nurse, False, "invite", member_count=2).allowed


def test_unclassified_rooms_and_the_bot_are_not_restricted():
    assert decide_membership(P, RoomClassState(), cardiologist, False, "join").allowed
    assert decide_membership(P, ICU_ROOM, None, True, "join").allowed


def test_weakening_a_room_below_its_class_is_refused():
    assert not decide_state_change(P, ICU_ROOM, "m.room.join_rules", {"join_rule": "public"}, False).allowed
    assert decide_state_change(P, ICU_ROOM, "m.room.join_rules", {"join_rule": "invite"}, False).allowed
    assert not decide_state_change(P, ICU_ROOM, "m.room.power_levels", {"kick": 0}, False).allowed
    # Omitted keys mean the Matrix defaults (kick 50), which meet the floor.
    assert decide_state_change(P, ICU_ROOM, "m.room.power_levels", {"users": {}}, False).allowed
    assert decide_state_change(P, ICU_ROOM, "m.room.join_rules", {"join_rule": "public"}, True).allowed


def test_new_room_gets_the_default_class_and_dm_the_direct_class():
    made = decide_create(P, {"name": "x"}, cardiologist, False, [])
    assert made.verdict.allowed and made.room.class_id == "discussion" and made.add_class_event
    dm = decide_create(P, {"is_direct": True, "invite": ["@n3002:x"]}, cardiologist, False, [(ward_nurse, False)])
    assert dm.room.class_id == "direct"


def test_creation_refusals():
    assert decide_create(P, {"visibility": "public"}, cardiologist, False, []).verdict.rule == "room.directory"
    scoped = {"initial_state": [{"type": ROOM_CLASS_EVENT, "state_key": "", "content": {"class": "department", "unit": "icu"}}]}
    assert decide_create(P, scoped, icu_nurse, False, []).verdict.rule == "room_class.department.create"
    dm3 = decide_create(P, {"is_direct": True}, cardiologist, False, [(ward_nurse, False), (icu_nurse, False)])
    assert dm3.verdict.rule == "room_class.direct.max_members"
    world = {"initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "world_readable"}}]}
    assert decide_create(P, world, cardiologist, False, []).verdict.rule == "room_class.discussion.history_visibility"


def test_only_the_service_publishes_rooms_in_the_directory():
    refused = decide_publish(False)
    assert refused.rule == "room.directory" and "cannot be published" in refused.message()
    assert decide_publish(True).allowed
    at_creation = decide_create(P, {"visibility": "public"}, cardiologist, False, []).verdict
    assert "create it as a private room" in at_creation.reason
    assert decide_create(P, {"visibility": "public", "name": "x"}, None, True, []).verdict.allowed
