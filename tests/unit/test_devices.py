"""Nurse-call devices: the policy section (with file:line errors) and the pure press rules."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from carematrix.devices import LastCall, gap_text, is_repeat, token_matches
from carematrix.policy import PolicyInvalid, load_policy
from carematrix.policy.loader import load_policy_texts
from tests.paths import DEMO_POLICY_DIR


def demo_texts() -> list[tuple[str, str]]:
    return [(p.name, p.read_text()) for p in sorted(DEMO_POLICY_DIR.glob("*.yaml")) if p.name != "devices.yaml"]


def errors_of(text: str) -> str:
    with pytest.raises(PolicyInvalid) as exc:
        load_policy_texts([*demo_texts(), ("devices.yaml", text)])
    return "\n".join(str(e) for e in exc.value.errors)


def test_demo_devices_page_the_icu_roles_the_policy_names():
    policy = load_policy(DEMO_POLICY_DIR).devices
    assert policy is not None and policy.repeat_window_seconds == 60
    bed = policy.devices["icu-bed-03"]
    assert bed.unit == "icu" and bed.bed == "03" and bed.generated_token and "03" in bed.label
    assert policy.roles_for(bed, "assist") == ("icu/nurse",)
    assert policy.roles_for(bed, "emergency") == ("icu/nurse", "icu/doctor")
    assert policy.roles_for(bed, "code") == ("icu/nurse", "icu/doctor", "administration/duty-doctor")
    assert policy.calls["assist"].priority == "urgent" and policy.calls["code"].priority == "critical"


def test_mistakes_are_reported_with_their_lines():
    text = (
        "devices:\n"
        "  repeat_window: soon\n"
        "  calls:\n"
        "    fire: {page: [nurse]}\n"
        "    code: {page: [nurse], also: [icu/nobody]}\n"
        "  devices:\n"
        "    bed-1:\n"
        "      location: {unit: nowhere}\n"
        "      token: generated\n"
        "    bed-2:\n"
        "      location: {unit: icu}\n"
        "      token: hunter2hunter2\n"
        "    bed-3:\n"
        "      location: {unit: cardiology}\n"
        "      token_sha256: abc\n"
        "    bed-4:\n"
        "      location: {unit: pharmacy}\n"
        "      token: generated\n"
    )
    errors = errors_of(text)
    assert "devices.yaml:2: 'repeat_window' of 'devices' must be a duration" in errors
    assert "devices.yaml:4: call kind 'fire' is not known" in errors
    assert "devices.yaml:5: 'also' of call kind 'code' names unknown on-call role 'icu/nobody'" in errors
    assert "devices.yaml:8: device 'bed-1' names unknown unit 'nowhere'" in errors
    assert "devices.yaml:12:" in errors and "a plain token does not belong in the policy" in errors
    assert "devices.yaml:15: 'token_sha256' of device 'bed-3' must be 64 hex digits" in errors
    assert "devices.yaml:17: device 'bed-4' is in unit 'pharmacy', which no 'clinical.wards' entry maps" in errors


def test_a_unit_without_the_role_a_press_pages_is_refused():
    # Ward 5A maps only a doctor: an assist press there would page nobody.
    text = (
        "devices:\n"
        "  devices:\n"
        "    5a-bed-1:\n"
        "      location: {unit: cardiology-ward-5a, bed: 1}\n"
        "      token: generated\n"
    )
    assert "devices.yaml:4: device '5a-bed-1': a 'assist' press pages the unit's nurse" in errors_of(text)


NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(("last", "kind", "after", "repeat"), [
    (None, "assist", 0, False),
    (("assist", False), "assist", 30, True),
    (("assist", False), "assist", 61, False),  # past the window: a new call
    (("assist", True), "assist", 5, False),  # acknowledged (or never paged): a new call
    (("assist", False), "emergency", 5, False),  # asks for more: at once
    (("code", False), "assist", 5, True),  # asks for less than the open code: part of it
    (("assist", False), "assist", -5, False),  # the clock moved back (a drill): a new call
])
def test_presses_within_the_window_are_one_call(last, kind, after, repeat):
    previous = LastCall("c1", last[0], NOW, last[1]) if last else None
    assert is_repeat(previous, kind, NOW + timedelta(seconds=after), 60) is repeat


def test_tokens_are_checked_against_their_hash():
    digest = hashlib.sha256(b"s3cret-token").hexdigest()
    assert token_matches("s3cret-token", digest)
    assert not token_matches("s3cret-tokem", digest)
    assert not token_matches("", digest) and not token_matches("s3cret-token", None)


def test_a_roster_gap_is_told_in_chinese_first_with_who_the_fallback_paged():
    told = gap_text("ICU nurse", ["陈静 Chen Jing (D2001)"])
    assert told.index("排班空缺") < told.index("Roster gap") and told.count("陈静 Chen Jing (D2001)") == 2
    nobody = gap_text("ICU nurse", [])
    assert nobody.index("排班空缺") < nobody.index("Roster gap") and "phone" in nobody
