"""Who may open and close a case room, and who may acknowledge a page: each refusal names its rule."""

from __future__ import annotations

from carematrix.policy import load_policy
from carematrix.rules.cases import decide_close_case, decide_open_case
from carematrix.rules.oncall import decide_ack
from tests.paths import DEMO_POLICY_DIR

P = load_policy(DEMO_POLICY_DIR)
OPEN = P.clinical.cases.open_positions
doctor, nurse, pharmacist = (P.staff_for_localpart(x) for x in ("d1001", "n3001", "p5001"))


def test_the_policy_positions_open_cases_and_others_are_refused_with_the_rule():
    assert decide_open_case(doctor, OPEN).allowed and decide_open_case(nurse, OPEN).allowed
    for person in (pharmacist, None):
        verdict = decide_open_case(person, OPEN)
        assert not verdict.allowed and verdict.rule == "case.open"
    assert verdict.message() == (
        "只有 doctor、nurse 岗位的员工可以发起患者会诊。"
        " Only doctor, nurse staff may open a patient case. [rule case.open]"
    )


def test_whoever_opened_a_case_closes_it_even_without_the_position():
    assert decide_close_case("@p5001:x", "@p5001:x", pharmacist, OPEN).allowed
    assert decide_close_case("@d1001:x", "@d1002:x", doctor, OPEN).allowed
    refused = decide_close_case("@p5001:x", "@d1001:x", pharmacist, OPEN)
    assert not refused.allowed and refused.rule == "case.close"
    assert "[rule case.close]" in refused.message() and "opened the case" in refused.message()
    # No clinical policy in force: only the opener.
    assert not decide_close_case("@d1001:x", "@d1002:x", doctor, frozenset()).allowed


def test_only_someone_on_the_staff_list_acknowledges():
    assert decide_ack("D1001").allowed
    verdict = decide_ack(None)
    assert not verdict.allowed and verdict.message() == (
        "只有员工名单上的员工可以确认呼叫。 Only staff on the staff list can acknowledge pages. [rule oncall.ack]"
    )
