"""Where a critical result goes when the message does not say, as the pure decision."""

from __future__ import annotations

from carematrix.clinical_routing import WardClue, route
from carematrix.policy.clinical import ClinicalPolicy, Rule, Ward

ICU = Ward("ICU", "icu", {"nurse": "icu/nurse"})
POLICY = ClinicalPolicy(
    frozenset({"LIS", "HIS"}), {"ICU": ICU},
    (Rule("critical_result", True, ("nurse",), "critical"), Rule("admission", True, (), "routine")),
    safety_net={"LIS": "lab/duty", "*": "hospital/duty"}, integration_room="integration",
)
CRITICAL = POLICY.rules_for("critical_result")


def test_the_first_clue_naming_a_known_ward_wins_and_says_where_it_came_from():
    clues = [WardClue(None, "the message"), WardClue("XYZ", "the last ADT"), WardClue("ICU", "the EMR")]
    r = route(POLICY, "LIS", CRITICAL, clues, "D1001")
    assert r.ward == ICU and r.how == "ward ICU from the EMR" and r.lead is None


def test_no_ward_pages_the_ordering_doctor_then_the_sources_safety_net():
    r = route(POLICY, "LIS", CRITICAL, [WardClue("XYZ", "the message")], "D1001")
    assert r.ward is None and r.fallback and r.lead == "D1001" and r.safety_net == "lab/duty"
    assert "ward 'XYZ' from the message is not in the clinical policy" in r.how and "ordering doctor" in r.how


def test_no_ward_and_no_ordering_doctor_pages_the_default_safety_net():
    r = route(POLICY, "EMR", CRITICAL, [], None)
    assert r.safety_net == "hospital/duty" and r.lead is None and r.deliverable
    assert r.how.startswith("no ward known")


def test_a_routine_notice_with_no_ward_is_undeliverable_not_paged():
    r = route(POLICY, "HIS", POLICY.rules_for("admission"), [WardClue("XYZ", "the message")], "D1001")
    assert not r.deliverable and r.safety_net is None and "nowhere to post" in r.how


def test_without_a_safety_net_a_paging_rule_with_no_ward_is_undeliverable():
    bare = ClinicalPolicy(POLICY.senders, POLICY.wards, POLICY.rules)
    r = route(bare, "LIS", CRITICAL, [], "D1001")
    assert not r.deliverable
