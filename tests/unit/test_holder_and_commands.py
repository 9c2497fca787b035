"""Reload keeps the last good policy; bot commands parse as a user types them."""

from __future__ import annotations

import os
import shutil

from appservice.commands import reply_ping
from carematrix.commands import parse_command
from carematrix.policy.holder import PolicyHolder
from tests.paths import DEMO_POLICY_DIR


def _bump(path):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_valid_edit_replaces_policy_and_invalid_edit_keeps_it(tmp_path):
    shutil.copytree(DEMO_POLICY_DIR, tmp_path / "p")
    outcomes = []
    holder = PolicyHolder(tmp_path / "p", on_outcome=outcomes.append)
    first = holder.current.digest
    assert holder.refresh() is None  # nothing changed, nothing reloaded

    rooms = tmp_path / "p" / "rooms.yaml"
    rooms.write_text(rooms.read_text().replace("reactions: true", "reactions: false"))
    _bump(rooms)
    outcome = holder.refresh()
    assert outcome.accepted and holder.current.digest != first
    assert holder.current.room_classes["announcement"].reactions is False
    second = holder.current.digest

    rooms.write_text("room_classes: [not, a, mapping]\n")
    _bump(rooms)
    outcome = holder.refresh()
    assert not outcome.accepted
    assert str(outcome.errors[0]).startswith(f"{rooms}:1:")
    assert holder.current.digest == second  # last good policy stays in force
    assert [o.accepted for o in outcomes] == [True, False]


def test_deleted_policy_file_keeps_the_last_good_policy(tmp_path):
    shutil.copytree(DEMO_POLICY_DIR, tmp_path / "p")
    holder = PolicyHolder(tmp_path / "p")
    good = holder.current
    (tmp_path / "p" / "hospital.yaml").unlink()
    outcome = holder.refresh()
    assert not outcome.accepted
    assert holder.current is good


def test_commands():
    assert parse_command("!ping").name == "ping"
    assert parse_command("  !PING now ").args == ("now",)
    assert parse_command("ping") is None
    assert parse_command("!") is None
    assert reply_ping(12.3, "abcdef0123456789").startswith("pong")
