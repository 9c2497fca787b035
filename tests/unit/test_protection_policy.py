"""Content protections in the policy YAML: what a class declares, and the combinations the
validator refuses with the line and the reason."""

from __future__ import annotations

import pytest

from carematrix.policy import PolicyInvalid, load_policy
from carematrix.policy.loader import load_policy_texts
from carematrix.policy.rooms import DEFAULT_BURN, BurnPolicy
from tests.paths import DEMO_POLICY_DIR

HOSPITAL = "hospital:\n  name: Test Hospital\nunits:\n  - id: hosp\n    name: Hospital\n"


def classes(body: str) -> str:
    return "room_classes:\n  ward:\n    description: ward room\n    protection:\n" + body


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyInvalid) as exc:
        load_policy_texts([("h.yaml", HOSPITAL), ("r.yaml", text)])
    return [str(e) for e in exc.value.errors]


def test_demo_hospital_protects_ward_and_case_rooms():
    policy = load_policy(DEMO_POLICY_DIR)
    ward = policy.room_classes["department"].protection
    assert ward.no_forward and ward.watermark and ward.no_screenshot
    assert ward.retention_seconds == 180 * 86400
    assert policy.room_classes["consult"].protection.retention_seconds is None
    assert policy.room_classes["confidential"].protection.burn == BurnPolicy(60, 86400)
    assert policy.room_classes["encrypted"].protection.encryption == "required"
    assert policy.burn_defaults == BurnPolicy(60, 7 * 86400)


def test_durations_and_defaults():
    policy = load_policy_texts(
        [("h.yaml", HOSPITAL), ("r.yaml", classes("      burn_after_read: {grace: 15m}\n      retention: 30d\n"))]
    )
    p = policy.room_classes["ward"].protection
    assert p.burn == BurnPolicy(15 * 60, DEFAULT_BURN.ttl_seconds)
    assert p.retention_seconds == 30 * 86400
    assert p.encryption == "server" and p.other_files == "audited"
    assert "阅后即焚 burn after read" in p.labels() and "保留30天 kept 30d" in p.labels()


def test_encryption_cannot_be_combined_with_watermark_or_no_forward():
    errors = errors_of(classes("      watermark: true\n      no_forward: true\n      encryption: required\n"))
    assert len(errors) == 1
    assert errors[0].startswith("r.yaml:7:")
    assert "watermark and no_forward" in errors[0] and "end-to-end encryption hides it" in errors[0]


def test_bad_values_are_reported_with_their_lines():
    errors = errors_of(
        classes(
            "      watermark: yes please\n      other_files: maybe\n      retention: forever\n"
            "      burn_after_read: {grace: 1w}\n      colour: red\n"
        )
    )
    text = "\n".join(errors)
    assert "r.yaml:9: unknown key 'colour'" in text
    assert "r.yaml:5: 'protection.watermark'" in text
    assert "r.yaml:6: 'protection.other_files'" in text
    assert "r.yaml:7: 'retention'" in text and "like 30s, 15m, 24h or 180d" in text
    assert "r.yaml:8: 'grace'" in text


def test_top_level_burn_defaults():
    policy = load_policy_texts(
        [("h.yaml", HOSPITAL + "burn_after_read:\n  grace: 5s\n  ttl: 1h\n")]
    )
    assert policy.burn_defaults == BurnPolicy(5, 3600)
    errors = errors_of("burn_after_read:\n  ttl: 0\n")
    assert errors and errors[0].startswith("r.yaml:2:") and "at least 1 seconds" in errors[0]


def test_retention_needs_a_unit():
    errors = errors_of(classes("      retention: 180\n"))
    assert errors == ["r.yaml:5: 'retention' of 'protection' of room class 'ward' needs a unit: write 180d for days, 180h for hours (a bare number would mean seconds)"]
