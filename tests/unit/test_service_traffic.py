"""Traffic with the CareMatrix service is not protected content: its own messages and the
commands staff send it are neither fingerprinted nor refused as forwards, while nothing that
can carry clinical text gets through behind a leading "!"."""

from __future__ import annotations

import re

import pytest

from appservice.commands import HELP
from carematrix.commands import COMMANDS, structured_command
from carematrix.rules.protection import SERVICE_COMMAND, SERVICE_MESSAGE, not_protected_content

REPORT = "ICU bed 7 王建国 72y: K+ 6.8 mmol/L at 02:10, ECG peaked T waves, calcium gluconate given."


def text(body: str, **extra: object) -> dict:
    return {"msgtype": "m.text", "body": body, **extra}


@pytest.mark.parametrize(
    "body",
    [
        "!oncall cardiology",
        "!oncall",
        "  !ONCALL icu  ",
        "!ping",
        "!help",
        "!quiet on",
        "!oncall cover cardiology/attending until 14:00 D1002",
        "!oncall swap icu/nurse N3001",
        "!case open P20261101 cardiology icu",
        "!case close",
        "!images 1.2.840.113619.2.55.3",
    ],
)
def test_a_command_the_bot_knows_is_not_protected_content(body: str):
    assert not_protected_content("m.room.message", text(body), is_system=False) == SERVICE_COMMAND
    assert not_protected_content("m.room.message", text(body, **{"m.mentions": {}}), is_system=False) == SERVICE_COMMAND


@pytest.mark.parametrize(
    "body",
    [
        REPORT,
        "!decision " + REPORT,  # a decision is the sender's own words: clinical content
        "!decision start heparin",
        "!forward " + REPORT,  # not a command the bot knows
        "!oncall " + REPORT,  # far more than a unit
        "!oncall cardiology\n" + REPORT,  # a second line is not part of a command
        "!case open P1 " + " ".join(["word"] * 10),  # more arguments than any case command takes
        "!oncall " + "k" * 65,  # not an identifier-like word
        "!oncall 钾6.8，心电图T波高尖",  # a sentence, not a unit
        "!oncall 钾68心电图T波高尖",  # words in another script are text, not policy IDs
        "!",
        "> <@d1001:localhost> " + REPORT + "\n\n!oncall cardiology",  # a reply carrying a quote
    ],
)
def test_anything_that_can_carry_clinical_text_stays_protected(body: str):
    assert not_protected_content("m.room.message", text(body), is_system=False) is None


@pytest.mark.parametrize(
    "extra",
    [
        {"formatted_body": "<p>" + REPORT + "</p>", "format": "org.matrix.custom.html"},
        {"m.new_content": text(REPORT), "m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}},
        {"m.relates_to": {"m.in_reply_to": {"event_id": "$x"}}},
        {"url": "mxc://localhost/abc"},
    ],
)
def test_a_command_with_anything_beside_it_stays_protected(extra: dict):
    assert not_protected_content("m.room.message", text("!oncall cardiology", **extra), is_system=False) is None


def test_only_a_plain_text_message_can_be_a_command():
    assert not_protected_content("m.room.message", {"msgtype": "m.notice", "body": "!ping"}, is_system=False) is None
    assert not_protected_content("m.room.message", {"msgtype": "m.image", "body": "!ping", "url": "mxc://a/b"}, is_system=False) is None
    assert not_protected_content("m.sticker", text("!ping"), is_system=False) is None
    assert not_protected_content("m.room.message", {"msgtype": "m.text", "body": None}, is_system=False) is None
    assert not_protected_content("m.room.message", "!ping", is_system=False) is None  # type: ignore[arg-type]


def test_the_service_s_own_messages_are_never_protected_content():
    for content in (text(REPORT), {"msgtype": "m.image", "body": "ct.jpg", "url": "mxc://localhost/ct"}):
        assert not_protected_content("m.room.message", content, is_system=True) == SERVICE_MESSAGE


def test_exemptions_carry_rule_ids():
    assert SERVICE_COMMAND.allowed and SERVICE_COMMAND.rule == "protection.service_command"
    assert SERVICE_MESSAGE.allowed and SERVICE_MESSAGE.rule == "protection.service_message"


def test_the_shared_command_list_is_the_bot_s_help():
    """One list of commands for the bot and the homeserver: a command added to the help must
    be added to carematrix.commands too, or the homeserver would protect it as content."""
    in_help = set(re.findall(r"^!(\w+)", HELP, flags=re.MULTILINE))
    assert in_help == set(COMMANDS)
    assert structured_command("!decision anything") is None


def test_a_transcript_the_service_posts_is_protected_like_the_voice_it_transcribes():
    transcript = {
        "msgtype": "m.notice", "body": "🎙 语音转写 Transcript: 三床病人血钾偏低，请医生查看化验结果",
        "org.carematrix.transcript": {"event_id": "$v", "language": "zh", "model": "m", "confidence": 0.8},
    }
    assert not_protected_content("m.room.message", transcript, is_system=True) is None
    assert not_protected_content("m.room.message", {"msgtype": "m.notice", "body": "paged"}, is_system=True) is not None
