"""Policy reloads: a valid edit replaces the policy whole, a broken one keeps the last good
policy, the parse runs off the event loop, and only one reload runs at a time."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import carematrix.policy.holder as holder_module
from carematrix.policy.holder import PolicyHolder, run_here
from carematrix.policy.loader import load_policy
from carematrix.policy.model import Policy
from tests.paths import DEMO_POLICY_DIR


def _bump(path: Path) -> None:
    """A later modification time, as a save a second later would leave."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _set_reactions(directory: Path, value: str) -> None:
    rooms = directory / "rooms.yaml"
    text = rooms.read_text(encoding="utf-8")
    rooms.write_text(text.replace("reactions: true", f"reactions: {value}").replace("reactions: false", f"reactions: {value}"), encoding="utf-8")
    _bump(rooms)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    shutil.copytree(DEMO_POLICY_DIR, tmp_path / "p")
    return tmp_path / "p"


def _at_each_parse(monkeypatch: pytest.MonkeyPatch, probe: Callable[[], object]) -> list[object]:
    """What ``probe()`` gives in each later reload's parse, as it starts (in the parsing thread)."""
    seen: list[object] = []

    def load(directory: Path) -> Policy:
        seen.append(probe())
        return load_policy(directory)

    monkeypatch.setattr(holder_module, "load_policy", load)
    return seen


class HeldReload:
    """An offload that parses in a thread and then holds the result until released: a
    reload caught half-way, with the event loop free meanwhile."""

    def __init__(self) -> None:
        self.calls = 0
        self.parsed = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, fn):
        self.calls += 1
        result = await asyncio.to_thread(fn)
        self.parsed.set()
        await self.release.wait()
        return result


async def test_valid_edit_replaces_policy_and_invalid_edit_keeps_it(policy_dir):
    outcomes = []
    holder = PolicyHolder(policy_dir, on_outcome=outcomes.append)
    first = holder.current.digest
    assert await holder.refresh(run_here) is None  # nothing changed, nothing reloaded

    _set_reactions(policy_dir, "false")
    outcome = await holder.refresh(run_here)
    assert outcome.accepted and holder.current.digest != first
    assert holder.current.room_classes["announcement"].reactions is False
    second = holder.current.digest

    rooms = policy_dir / "rooms.yaml"
    rooms.write_text("room_classes: [not, a, mapping]\n")
    _bump(rooms)
    outcome = await holder.refresh(run_here)
    assert not outcome.accepted
    assert str(outcome.errors[0]).startswith(f"{rooms}:1:")
    assert holder.current.digest == second  # last good policy stays in force
    assert [o.accepted for o in outcomes] == [True, False]


async def test_deleted_policy_file_keeps_the_last_good_policy(policy_dir):
    holder = PolicyHolder(policy_dir)
    good = holder.current
    (policy_dir / "hospital.yaml").unlink()
    outcome = await holder.refresh(run_here)
    assert not outcome.accepted
    assert holder.current is good


async def test_the_policy_is_parsed_in_the_thread_the_process_hands_it_to(policy_dir, monkeypatch):
    holder = PolicyHolder(policy_dir)
    parsed_on = _at_each_parse(monkeypatch, threading.get_ident)
    _set_reactions(policy_dir, "false")
    assert (await holder.refresh(asyncio.to_thread)).accepted
    assert parsed_on and threading.get_ident() not in parsed_on


async def test_readers_see_the_old_policy_until_the_new_one_is_whole(policy_dir):
    holder = PolicyHolder(policy_dir)
    old = holder.current
    held = HeldReload()
    _set_reactions(policy_dir, "false")
    reload = asyncio.create_task(holder.refresh(held))
    await held.parsed.wait()
    # Parsed but not yet in force: the loop runs on, and readers get the old policy.
    assert holder.current is old
    held.release.set()
    outcome = await reload
    new = holder.current
    assert outcome.accepted and new is not old
    assert new.room_classes["announcement"].reactions is False
    assert new.staff_for_localpart("d1001") is not None  # its lookups are built too


async def test_one_reload_at_a_time_and_an_edit_during_it_is_loaded_right_after(policy_dir):
    outcomes = []
    holder = PolicyHolder(policy_dir, on_outcome=outcomes.append)
    held = HeldReload()
    _set_reactions(policy_dir, "false")
    first = asyncio.create_task(holder.refresh(held))
    await held.parsed.wait()

    _set_reactions(policy_dir, "true")  # saved again while the first edit is being loaded
    assert await holder.refresh(held) is None  # a poll meanwhile starts no second reload
    assert held.calls == 1

    held.release.set()
    outcome = await first
    assert held.calls == 2  # the reload went round once more for the second edit
    assert outcome.accepted
    assert holder.current.room_classes["announcement"].reactions is True
    assert [o.accepted for o in outcomes] == [True, True]
    assert await holder.refresh(held) is None  # and then nothing is left to do


async def test_a_broken_edit_saved_during_a_reload_keeps_the_edit_before_it(policy_dir):
    holder = PolicyHolder(policy_dir)
    held = HeldReload()
    _set_reactions(policy_dir, "false")
    first = asyncio.create_task(holder.refresh(held))
    await held.parsed.wait()
    rooms = policy_dir / "rooms.yaml"
    rooms.write_text("room_classes:\n  announcement: {post: [\n", encoding="utf-8")
    _bump(rooms)
    held.release.set()
    outcome = await first
    assert not outcome.accepted and "invalid YAML" in str(outcome.errors[0])
    assert str(outcome.errors[0]).startswith(f"{rooms}:")
    assert holder.current.room_classes["announcement"].reactions is False  # the valid edit


async def test_a_parse_that_fails_unexpectedly_is_tried_again_at_the_next_poll(policy_dir):
    holder = PolicyHolder(policy_dir)
    old = holder.current

    async def broken_pool(fn):
        raise RuntimeError("thread pool shut down")

    _set_reactions(policy_dir, "false")
    with pytest.raises(RuntimeError):
        await holder.refresh(broken_pool)
    assert holder.current is old
    outcome = await holder.refresh(run_here)
    assert outcome.accepted and holder.current.room_classes["announcement"].reactions is False


async def test_automatic_collection_pauses_while_parsing_and_is_left_as_the_process_had_it(policy_dir, monkeypatch):
    holder = PolicyHolder(policy_dir)
    during = _at_each_parse(monkeypatch, gc.isenabled)
    assert gc.isenabled()
    _set_reactions(policy_dir, "false")
    await holder.refresh(asyncio.to_thread)
    assert during == [False] and gc.isenabled()
    gc.disable()  # as Synapse runs: it collects on its own schedule
    try:
        _set_reactions(policy_dir, "true")
        await holder.refresh(asyncio.to_thread)
        assert during == [False, False] and not gc.isenabled()
    finally:
        gc.enable()
