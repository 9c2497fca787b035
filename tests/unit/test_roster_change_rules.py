"""Who may change the on-call roster from chat: ``!oncall cover`` and ``!oncall swap``."""

from __future__ import annotations

from carematrix.policy import load_policy
from carematrix.rules.oncall import decide_cover, decide_swap
from tests.paths import DEMO_POLICY_DIR

P = load_policy(DEMO_POLICY_DIR)
ROLE = "心内科 · 主班医生 (值班) Cardiology – attending on duty"
day_doctor, night_doctor, scheduler, icu_nurse = (P.staff_for_localpart(x) for x in ("d1001", "d1002", "n3002", "n3001"))
OVERRIDES = P.oncall.overrides_by


def test_the_holder_hands_the_role_over_and_a_scheduler_may_too():
    assert OVERRIDES == {"scheduler"} and "scheduler" in scheduler.roles
    assert decide_cover(day_doctor, ROLE, ["D1001"], OVERRIDES).allowed
    assert decide_cover(scheduler, ROLE, ["D1001"], OVERRIDES).allowed
    # A roster gap: nobody holds the role, a scheduler still fills it.
    assert decide_cover(scheduler, ROLE, [], OVERRIDES).allowed


def test_anyone_else_is_refused_with_the_rule():
    for person in (night_doctor, icu_nurse, None):
        verdict = decide_cover(person, ROLE, ["D1001"], OVERRIDES)
        assert not verdict.allowed and verdict.rule == "oncall.cover"
    assert verdict.message() == (
        f"只有当前担任 {ROLE} 的人或具有 'scheduler' 角色的员工可以更改由谁顶班。"
        f" Only whoever holds {ROLE} now or staff with the role 'scheduler' may change who covers it. "
        "[rule oncall.cover]"
    )


def test_without_overrides_only_the_holder_may():
    verdict = decide_cover(scheduler, ROLE, ["D1001"], frozenset())
    assert not verdict.allowed and "staff with the role" not in verdict.reason
    assert decide_cover(day_doctor, ROLE, ["D1001"], frozenset()).allowed


def test_staff_swap_their_own_shifts_and_other_accounts_may_not():
    assert decide_swap(night_doctor).allowed
    refused = decide_swap(None)
    assert not refused.allowed and refused.message().endswith("[rule oncall.swap]")
