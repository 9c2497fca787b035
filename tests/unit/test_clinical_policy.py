"""The clinical routing section: the demo hospital's rules, and mistakes an admin makes
reported with their lines."""

from __future__ import annotations

import pytest

from carematrix.policy import PolicyInvalid, load_policy
from carematrix.policy.loader import load_policy_texts
from tests.paths import DEMO_POLICY_DIR

HOSPITAL = "hospital:\n  name: T\nunits:\n  - id: icu\n    name: ICU\n"


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyInvalid) as exc:
        load_policy_texts([("h.yaml", HOSPITAL), ("c.yaml", text)])
    return [str(e) for e in exc.value.errors]


def test_demo_hospital_pages_icu_nurse_and_doctor_on_critical_results():
    clinical = load_policy(DEMO_POLICY_DIR).clinical
    assert clinical.senders == {"HIS", "LIS"}
    assert clinical.wards["ICU"].roles == {"nurse": "icu/nurse", "doctor": "icu/doctor"}
    (rule,) = clinical.rules_for("critical_result")
    assert rule.page == ("nurse", "doctor") and rule.priority == "critical" and rule.post


def test_mistakes_are_reported_with_lines():
    text = (
        "clinical:\n"
        "  senders: [HIS]\n"
        "  wards:\n"
        "    W9: {unit: nowhere, roles: {nurse: icu/nurse}}\n"
        "  rules:\n"
        "    - {on: admission}\n"
        "    - {when: critical_result, page: [pharmacist]}\n"
    )
    errors = "\n".join(errors_of(text))
    assert "c.yaml:4: ward 'W9' names unknown unit 'nowhere'" in errors
    assert "c.yaml:4: 'roles.nurse' of ward 'W9' names unknown on-call role 'icu/nurse'" in errors
    assert "c.yaml:6: unknown key 'True'" in errors  # YAML reads a bare `on` as true
    assert "c.yaml:7: 'page' names 'pharmacist'" in errors


def test_demo_hospital_fhir_sources_cases_and_links():
    clinical = load_policy(DEMO_POLICY_DIR).clinical
    assert clinical.fhir_sources["LIS"] == {"Observation", "DiagnosticReport"}
    assert "ImagingStudy" in clinical.fhir_sources["EMR"]
    (report,) = clinical.rules_for("report")
    assert report.notify == ("ordering_provider",) and not report.post
    assert clinical.cases.open_positions == {"doctor", "nurse"}
    assert clinical.cases.consult_orders == {"CONS-ICU": ("icu",), "CONS-CARD": ("cardiology",)}
    assert clinical.link("study", study_uid="1.2.3") == "https://pacs.renhe.example/viewer?StudyInstanceUID=1.2.3"
    assert clinical.link("patient", patient_id="P 1/2") == "https://his.renhe.example/patient/P%201%2F2"


def test_fhir_case_and_link_mistakes_are_reported_with_lines():
    text = (
        "clinical:\n"
        "  senders: [HIS]\n"
        "  rules:\n"
        "    - {when: report, notify: [ward_clerk]}\n"
        "  fhir_sources:\n"
        "    EMR: [Observation, Appointment]\n"
        "    LIS: []\n"
        "  cases:\n"
        "    key_images: 50\n"
        "    room_name: 'Case {bed}'\n"
        "    consult_orders: {CONS-X: [nowhere]}\n"
        "  deep_links:\n"
        "    study: 'https://pacs/{study}'\n"
        "    lab: 'https://lis/{patient_id}'\n"
    )
    errors = "\n".join(errors_of(text))
    assert "c.yaml:4: 'notify' names 'ward_clerk'" in errors
    assert "c.yaml:6: FHIR source 'EMR' lists unsupported resource types Appointment" in errors
    assert "c.yaml:7: FHIR source 'LIS' needs the list of resource types" in errors
    assert "c.yaml:9: 'key_images' must be a whole number from 1 to 20" in errors
    assert "c.yaml:10: 'room_name' may use {patient_name} and {patient_id} only" in errors
    assert "c.yaml:11: consult order 'CONS-X' names unknown unit(s) nowhere" in errors
    assert "c.yaml:13: deep link 'study' uses an unknown field" in errors
    assert "c.yaml:14: deep link 'lab' is not known" in errors


ONCALL = (
    "oncall:\n  timezone: Asia/Shanghai\n  roles:\n"
    "    icu/nurse:\n      unit: icu\n      name: ICU nurse\n      escalation: [{to: oncall, timeout: 2m}]\n"
    "    icu/duty:\n      unit: icu\n      name: Duty\n      escalation: [{to: oncall, timeout: 2m}]\n"
)
PAGING = (
    "clinical:\n"
    "  senders: [HIS, LIS]\n"
    "  wards:\n"
    "    ICU: {unit: icu, roles: {nurse: icu/nurse}}\n"
    "  rules:\n"
    "    - {when: critical_result, page: [nurse], priority: critical}\n"
)


def oncall_errors(text: str) -> list[str]:
    with pytest.raises(PolicyInvalid) as exc:
        load_policy_texts([("h.yaml", HOSPITAL), ("o.yaml", ONCALL), ("c.yaml", text)])
    return [str(e) for e in exc.value.errors]


def test_policy_check_refuses_critical_routing_without_a_safety_net():
    errors = "\n".join(oncall_errors(PAGING))
    assert "'clinical' pages for critical_result but has no 'safety_net' role for HIS, LIS" in errors
    partial = PAGING + "  safety_net: {LIS: icu/duty}\n  integration_room: integration\n"
    assert "no 'safety_net' role for HIS:" in "\n".join(oncall_errors(partial))
    unknown = PAGING + "  safety_net: {'*': icu/ghost}\n  integration_room: integration\n"
    assert "safety net for '*' names unknown on-call role 'icu/ghost'" in "\n".join(oncall_errors(unknown))
    no_room = PAGING + "  safety_net: {'*': icu/duty}\n"
    assert "needs 'integration_room'" in "\n".join(oncall_errors(no_room))
    good = PAGING + "  safety_net: {'*': icu/duty}\n  integration_room: integration\n"
    policy = load_policy_texts([("h.yaml", HOSPITAL), ("o.yaml", ONCALL), ("c.yaml", good)]).clinical
    assert policy.safety_net_for("LIS") == "icu/duty" and policy.integration_room == "integration"


def test_demo_hospital_has_a_safety_net_for_every_source_and_acknowledges_an_alert_when_all_roles_have():
    clinical = load_policy(DEMO_POLICY_DIR).clinical
    for source in (*clinical.senders, *(clinical.fhir_sources or {})):
        assert clinical.safety_net_for(source) == "administration/duty-doctor"
    (rule,) = clinical.rules_for("critical_result")
    assert rule.acknowledged_when == "all"
