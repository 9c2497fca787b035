"""Staff appear under their real name in every room: per-room nicknames are refused."""

from __future__ import annotations

from carematrix.policy import load_policy
from carematrix.rules.display_name import (
    PROFILE_REAL_NAME,
    REAL_NAMES,
    decide_display_name,
    decide_profile_name,
)
from tests.paths import DEMO_POLICY_DIR

P = load_policy(DEMO_POLICY_DIR)
nurse = P.staff_for_localpart("n3001")
REAL = "刘洋 Liu Yang · 重症医学科 Intensive Care Unit · 护师 Nurse Practitioner"


def join(name=None):
    content = {"membership": "join"}
    return {**content, "displayname": name} if name is not None else content


def test_staff_join_under_their_real_name():
    assert P.display_name(nurse) == REAL
    assert decide_display_name(P, nurse, join(REAL)).allowed
    assert decide_display_name(P, nurse, join()).allowed


def test_a_per_room_nickname_is_refused_with_the_rule():
    verdict = decide_display_name(P, nurse, join("Night Owl"))
    assert verdict == REAL_NAMES
    assert "real name" in verdict.message() and verdict.message().endswith("[rule identity.real_name]")
    # The profile does not excuse a nickname that is not on it.
    assert not decide_display_name(P, nurse, join("Night Owl"), profile_name=REAL).allowed


def test_the_name_on_the_profile_passes_while_org_sync_catches_up_with_a_rename():
    old = "刘洋 Liu Yang · 重症医学科 Intensive Care Unit · 护士 Nurse"
    assert not decide_display_name(P, nurse, join(old)).allowed
    assert decide_display_name(P, nurse, join(old), profile_name=old).allowed


def test_only_joins_of_staff_are_held_to_it():
    assert decide_display_name(P, None, join("CareMatrix")).allowed
    assert decide_display_name(P, nurse, {"membership": "leave", "displayname": "Night Owl"}).allowed


def test_staff_cannot_change_their_own_display_name_and_are_told_why_in_chinese_first():
    verdict = decide_profile_name(P, nurse, "Night Owl")
    assert verdict == PROFILE_REAL_NAME and verdict.rule == "identity.real_name"
    message = verdict.message()
    # Chinese first, English beside it, the rule last.
    assert message.index("实名制") < message.index("real-name policy") < message.index("[rule identity.real_name]")
    assert message.endswith("[rule identity.real_name]")
    assert not decide_profile_name(P, nurse, "").allowed
    assert not decide_profile_name(P, nurse, None).allowed


def test_the_real_name_itself_and_accounts_outside_the_staff_list_pass():
    assert decide_profile_name(P, nurse, REAL).allowed
    assert decide_profile_name(P, None, "CareMatrix").allowed
