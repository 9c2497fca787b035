"""Policy reloads: a valid edit replaces the policy whole, a broken one keeps the last good
policy, the parse runs off the event loop, and only one reload runs at a time."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import carematrix.policy.holder as holder_module
import carematrix.policy.parse_process as parse_process
from carematrix.policy.errors import PolicyInvalid
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


def _at_each_rebuild(monkeypatch: pytest.MonkeyPatch, probe: Callable[[], object]) -> list[object]:
    """What ``probe()`` gives in each later reload as this process starts rebuilding the
    policy the child process parsed (in the thread the offload runs it in). The parent must
    not parse it itself: its own loader fails the test if called."""
    seen: list[object] = []
    decode = parse_process.decode

    def rebuild(parts: list[bytes]) -> object:
        seen.append(probe())
        return decode(parts)

    def parsed_here(directory: Path) -> Policy:
        raise AssertionError("parsed in the process that enforces the policy")

    monkeypatch.setattr(parse_process, "decode", rebuild)
    monkeypatch.setattr(parse_process, "load_policy", parsed_here)
    monkeypatch.setattr(holder_module, "load_policy", parsed_here)
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


async def test_the_policy_is_parsed_in_a_child_process_and_rebuilt_in_the_thread_handed_over(policy_dir, monkeypatch):
    holder = PolicyHolder(policy_dir)
    expected = load_policy(policy_dir)
    rebuilt_on = _at_each_rebuild(monkeypatch, threading.get_ident)
    _set_reactions(policy_dir, "false")
    assert (await holder.refresh(asyncio.to_thread)).accepted
    assert rebuilt_on and threading.get_ident() not in rebuilt_on
    new = holder.current
    assert new.room_classes["announcement"].reactions is False and new.digest != expected.digest
    # The same policy a parse here gives: every section, the staff and their lookups.
    monkeypatch.undo()
    here = load_policy(policy_dir)
    assert new == here and new.digest == here.digest
    person = expected.staff[0]
    assert new.staff_for_localpart(person.localpart) == person
    assert {u: new.subtree(u) for u in new.units} == {u: expected.subtree(u) for u in expected.units}


async def test_a_broken_edit_parsed_in_the_child_names_file_and_line_and_keeps_the_last_good_policy(policy_dir,
                                                                                                  monkeypatch):
    holder = PolicyHolder(policy_dir)
    good = holder.current
    _at_each_rebuild(monkeypatch, lambda: None)
    staff = policy_dir / "staff.yaml"
    staff.write_text(staff.read_text(encoding="utf-8") + "  - staff_number: [oops\n", encoding="utf-8")
    _bump(staff)
    outcome = await holder.refresh(asyncio.to_thread)
    assert not outcome.accepted and holder.current is good
    syntax = [e for e in outcome.errors if "invalid YAML" in e.message]
    assert [e.file for e in syntax] == [str(staff)] and syntax[0].line > 1
    monkeypatch.undo()
    here = holder_module.parse(policy_dir)
    assert isinstance(here, PolicyInvalid) and list(outcome.errors) == here.errors  # as a parse here reports it


async def test_when_the_child_process_fails_the_edit_is_parsed_here_with_a_warning(policy_dir, monkeypatch, caplog):
    holder = PolicyHolder(policy_dir)
    monkeypatch.setattr(parse_process, "command", lambda directory: [sys.executable, "-c", "import sys; sys.exit(3)"])
    _set_reactions(policy_dir, "false")
    with caplog.at_level(logging.WARNING, logger=parse_process.__name__):
        assert (await holder.refresh(asyncio.to_thread)).accepted
    assert holder.current.room_classes["announcement"].reactions is False
    assert any("child process failed" in r.getMessage() and "exit status 3" in r.getMessage() for r in caplog.records)


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


async def test_automatic_collection_pauses_while_rebuilding_and_is_left_as_the_process_had_it(policy_dir, monkeypatch):
    holder = PolicyHolder(policy_dir)
    during = _at_each_rebuild(monkeypatch, gc.isenabled)
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


@pytest.fixture(autouse=True)
def _unfrozen():
    """Reloads freeze the collector's view of the heap; each test starts and ends unfrozen."""
    gc.unfreeze()
    yield
    gc.unfreeze()


async def test_a_reloaded_policy_is_left_out_of_the_collectors_scans(policy_dir):
    holder = PolicyHolder(policy_dir)
    _set_reactions(policy_dir, "false")
    assert (await holder.refresh(asyncio.to_thread)).accepted
    new = holder.current
    assert gc.get_freeze_count() > 0
    scanned = gc.get_objects()
    assert not any(o is new or o is new.staff[0] for o in scanned)
    # A broken edit freezes nothing new.
    frozen = gc.get_freeze_count()
    (policy_dir / "rooms.yaml").write_text("room_classes: [not, a, mapping]\n")
    _bump(policy_dir / "rooms.yaml")
    assert not (await holder.refresh(asyncio.to_thread)).accepted
    assert gc.get_freeze_count() <= frozen


def test_the_parsing_child_gives_way_to_the_event_loops(policy_dir):
    """Run as a process would run it: it lowers its own priority, then writes the policy."""
    probe = (
        "import os, sys, runpy; before = os.nice(0); sys.argv = ['x', sys.argv[1]];"
        "import carematrix.policy.parse_process as p;"
        "real = p.load_policy;"
        "p.load_policy = lambda d: (sys.stderr.write(str(os.nice(0) - before)), real(d))[1];"
        "sys.exit(p.main(sys.argv[1:]))"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(policy_dir)], capture_output=True, check=True,
                          env=parse_process._child_env())
    assert done.stderr.decode() == str(parse_process.NICENESS)
    parsed = parse_process.decode(parse_process._unframe(done.stdout))
    assert isinstance(parsed, Policy) and parsed.digest == load_policy(policy_dir).digest
