"""Bot commands parse as a user types them."""

from __future__ import annotations

from appservice.commands import reply_ping
from carematrix.commands import parse_command


def test_commands():
    assert parse_command("!ping").name == "ping"
    assert parse_command("  !PING now ").args == ("now",)
    assert parse_command("ping") is None
    assert parse_command("!") is None
    assert reply_ping(12.3, "abcdef0123456789").startswith("pong")


def test_a_command_typed_with_a_chinese_input_method_reads_as_typed_in_ascii():
    assert parse_command("！oncall icu") == parse_command("!oncall icu")
    assert parse_command("！ｏｎｃａｌｌ　ｉｃｕ") == parse_command("!oncall icu")
    assert parse_command("!ack ３F9A1C").args == ("3F9A1C",)
    # Chat that merely opens with a full-width exclamation mark is not a command.
    assert parse_command("！！12床血钾6.8") is None
    assert parse_command("！紧急 12床") is None
    assert parse_command("！") is None
    # A decision is the doctor's own words, kept as written.
    assert parse_command("！decision 血钾６．８，停补钾").args == ("血钾６．８，停补钾",)
