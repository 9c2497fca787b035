"""Pure room-class decisions: who may post, who may set a class."""

from __future__ import annotations

import pytest

from carematrix.policy.loader import load_policy_texts
from carematrix.rules.room_class import decide_class_change, decide_post

POLICY = load_policy_texts(
    [
        (
            "p.yaml",
            """\
hospital: {name: H}
roles: {announcer: {}, auditor: {}}
units: [{id: icu, name: ICU}]
staff:
  - {staff_number: A1, name: Announcer, units: [icu], position: administrator, roles: [announcer]}
  - {staff_number: N1, name: Nurse, units: [icu], position: nurse}
  - {staff_number: D1, name: Named doctor, units: [icu], position: doctor}
room_classes:
  announcement:
    post: {roles: [announcer], staff: [D1]}
    create: {roles: [announcer]}
  quiet:
    post: {roles: [announcer]}
    reactions: false
  open: {}
""",
        )
    ]
)
ANNOUNCER = POLICY.staff_for_localpart("a1")
NURSE = POLICY.staff_for_localpart("n1")
NAMED = POLICY.staff_for_localpart("d1")


def test_unclassified_rooms_are_not_restricted():
    assert decide_post(POLICY, None, NURSE, "m.room.message", False).allowed


@pytest.mark.parametrize("who", [ANNOUNCER, NAMED])
def test_role_holders_and_named_staff_post_in_announcements(who):
    assert decide_post(POLICY, "announcement", who, "m.room.message", False).allowed


def test_nurse_cannot_post_and_the_reason_names_the_rule():
    verdict = decide_post(POLICY, "announcement", NURSE, "m.room.message", False)
    assert not verdict.allowed
    assert verdict.rule == "room_class.announcement.post"
    assert "'announcer'" in verdict.reason and "named staff" in verdict.reason


def test_encrypted_posts_are_restricted_too():
    assert not decide_post(POLICY, "announcement", NURSE, "m.room.encrypted", False).allowed


def test_accounts_outside_the_org_cannot_post_in_restricted_rooms():
    assert not decide_post(POLICY, "announcement", None, "m.room.message", False).allowed


def test_reactions_follow_the_class_setting():
    assert decide_post(POLICY, "announcement", NURSE, "m.reaction", False).allowed
    assert not decide_post(POLICY, "quiet", NURSE, "m.reaction", False).allowed


def test_bot_posts_everywhere():
    assert decide_post(POLICY, "quiet", None, "m.room.message", True).allowed


def test_class_without_post_rule_lets_members_post():
    assert decide_post(POLICY, "open", NURSE, "m.room.message", False).allowed


def test_room_whose_class_left_the_policy_is_blocked_not_opened():
    verdict = decide_post(POLICY, "retired-class", ANNOUNCER, "m.room.message", False)
    assert not verdict.allowed and verdict.rule == "room_class.undefined"


def test_class_is_fixed_once_set():
    verdict = decide_class_change(POLICY, "announcement", "open", ANNOUNCER, False)
    assert not verdict.allowed and verdict.rule == "room_class.immutable"
    assert decide_class_change(POLICY, "announcement", "open", None, True).allowed


def test_creating_a_class_needs_the_create_audience():
    assert decide_class_change(POLICY, None, "announcement", ANNOUNCER, False).allowed
    denied = decide_class_change(POLICY, None, "announcement", NURSE, False)
    assert not denied.allowed and denied.rule == "room_class.announcement.create"
    assert decide_class_change(POLICY, None, "open", NURSE, False).allowed


def test_unknown_or_malformed_class_cannot_be_set():
    assert decide_class_change(POLICY, None, "nonsense", ANNOUNCER, False).rule == "room_class.undefined"
    assert not decide_class_change(POLICY, None, {"x": 1}, ANNOUNCER, False).allowed


def test_refusal_message_carries_reason_and_rule():
    verdict = decide_post(POLICY, "announcement", NURSE, "m.room.message", False)
    assert verdict.message().endswith("[rule room_class.announcement.post]")
