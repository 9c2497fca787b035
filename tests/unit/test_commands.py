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
