"""The clinical routing section: the demo hospital's rules, and mistakes an admin makes
reported with their lines."""

from __future__ import annotations

import pytest

from carematrix.deploy import REPO_ROOT
from carematrix.policy import PolicyInvalid, load_policy
from carematrix.policy.loader import load_policy_texts

HOSPITAL = "hospital:\n  name: T\nunits:\n  - id: icu\n    name: ICU\n"


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyInvalid) as exc:
        load_policy_texts([("h.yaml", HOSPITAL), ("c.yaml", text)])
    return [str(e) for e in exc.value.errors]


def test_demo_hospital_pages_icu_nurse_and_doctor_on_critical_results():
    clinical = load_policy(REPO_ROOT / "policies").clinical
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
