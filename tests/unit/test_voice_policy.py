"""The voice section: language and glossary per unit (inherited down the tree), and an
admin's mistakes reported with file and line."""

from __future__ import annotations

import pytest

from carematrix.policy import PolicyInvalid, load_policy
from carematrix.policy.loader import load_policy_texts
from carematrix.policy.voice import DEFAULT_VOICE
from tests.paths import DEMO_POLICY_DIR

HOSPITAL = (
    "hospital:\n  name: T\nunits:\n  - id: med\n    name: Medicine\n    children:\n"
    "      - id: ward-a\n        name: Ward A\n  - id: intl\n    name: International\n"
)


def voice_of(text: str):
    return load_policy_texts([("h.yaml", HOSPITAL), ("v.yaml", text)]).voice


def errors_of(text: str) -> str:
    with pytest.raises(PolicyInvalid) as exc:
        load_policy_texts([("h.yaml", HOSPITAL), ("v.yaml", text)])
    return "\n".join(str(e) for e in exc.value.errors)


def test_without_a_section_messages_are_transcribed_with_detection_and_two_minutes():
    assert load_policy_texts([("h.yaml", HOSPITAL)]).voice == DEFAULT_VOICE
    assert DEFAULT_VOICE.transcribe and DEFAULT_VOICE.language == "auto" and DEFAULT_VOICE.max_seconds == 120


def test_a_ward_inherits_its_departments_terms_and_the_nearest_language_wins():
    voice = voice_of(
        "voice:\n  glossary: [血钾, 补钾]\n  units:\n"
        "    med: {glossary: [心衰, 血钾]}\n    ward-a: {glossary: [胺碘酮]}\n"
        "    intl: {language: en, glossary: [troponin]}\n"
    )
    assert voice.settings_for(["med", "ward-a"]) == ("auto", ("胺碘酮", "心衰", "血钾", "补钾"))
    assert voice.settings_for(["intl"]) == ("en", ("troponin", "血钾", "补钾"))
    assert voice.settings_for([]) == ("auto", ("血钾", "补钾"))


def test_demo_hospital_glossary_reaches_cardiology_ward_5a():
    policy = load_policy(DEMO_POLICY_DIR)
    language, terms = policy.voice.settings_for(policy.ancestry("cardiology-ward-5a"))
    assert language == "auto" and "血钾" in terms and "房颤" in terms
    assert terms.index("房颤") < terms.index("血钾")  # the unit's own terms first


def test_mistakes_are_reported_with_lines():
    errors = errors_of(
        "voice:\n"
        "  language: fr\n"
        "  max_seconds: 9000\n"
        "  glossary: [血钾, {x: 1}]\n"
        "  units:\n"
        "    nowhere: {glossary: [a]}\n"
        "    med: {language: de, voice: loud}\n"
        "  speed: fast\n"
    )
    assert "v.yaml:2: 'voice.language' must be one of: auto, zh, en" in errors
    assert "v.yaml:3: 'voice.max_seconds' must be a whole number of seconds from 1 to 600" in errors
    assert "v.yaml:4: 'glossary' in 'voice' must list text" in errors
    assert "v.yaml:6: 'voice.units' names unknown unit 'nowhere'" in errors
    assert "v.yaml:7: 'language' of voice settings of unit 'med' must be one of" in errors
    assert "v.yaml:7: unknown key 'voice' in voice settings of unit 'med'" in errors
    assert "v.yaml:8: unknown key 'speed' in 'voice'" in errors


def test_the_run_banner_names_a_role_to_send_a_voice_message_to():
    from carematrix_ops.cli.banner import _voice_line

    line = _voice_line(load_policy(DEMO_POLICY_DIR), "localhost")
    assert "#role-cardiology-attending:localhost" in line and "Cardiology – attending on duty" in line
