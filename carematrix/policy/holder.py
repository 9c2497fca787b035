"""Keeps the policy in force and swaps in edits only when they are valid.

Long-running processes (every Synapse process, the appservice) poll the policy directory;
a broken edit is reported once and the last good policy stays in force (fail closed).

Parsing a hospital's policy takes a second or more (5,000 staff), so a reload never parses
on the caller's event loop: ``refresh`` hands the work to a thread through the ``offload``
function the process gives it (Synapse's thread pool, ``asyncio.to_thread``), and that
thread has a child process parse it (``parse_process``: a parse in the thread itself would
still take the interpreter lock from the loop) and only rebuilds the result, in short
steps, then freezes it out of the garbage collector's scans (``parse_elsewhere``). Back on
the loop, ``current`` is replaced with the finished policy in one assignment — a reader sees
the old policy or the new one, whole. One reload runs at a time; a poll that comes while one
runs returns at once, and an edit saved during a reload is loaded right after it.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from carematrix.gc_pause import automatic_gc_paused
from carematrix.policy.errors import PolicyError, PolicyInvalid
from carematrix.policy.loader import load_policy, policy_fingerprint
from carematrix.policy.model import Policy
from carematrix.policy.parse_process import parse_in_child

log = logging.getLogger(__name__)

T = TypeVar("T")
# Runs a function off the event loop and returns its result to the loop.
Offload = Callable[[Callable[[], T]], Awaitable[T]]
Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class ReloadOutcome:
    accepted: bool
    digest: str
    errors: tuple[PolicyError, ...] = ()
    at: float = 0.0  # when the reload was decided (seconds since the epoch)


async def run_here(fn: Callable[[], T]) -> T:
    """An ``Offload`` that parses on the caller's thread, in this process: for tools and
    tests, where nothing else waits on the loop (a child process would only add its start)."""
    return fn()


def parse(directory: Path) -> Policy | PolicyInvalid:
    """The whole policy, or why it is not valid, parsed in this thread."""
    try:
        with automatic_gc_paused():
            return load_policy(directory)
    except PolicyInvalid as exc:
        return exc


def parse_elsewhere(directory: Path) -> Policy | PolicyInvalid:
    """The slow part, run off the loop: parsed in a child process, rebuilt in this thread
    (with automatic collection paused while its objects pile up: ``gc_pause`` says why).

    A rebuilt policy is then frozen out of the garbage collector's scans (``gc.freeze``,
    before collection resumes): its tens of thousands of objects live until the next edit,
    and every collection that walked them held the interpreter lock for 20–35 ms — Synapse's
    own collector (run from its reactor) did so right after each reload. Freezing moves every
    object alive now to the permanent generation, as Synapse does once at start; they are
    still freed by reference counting when dropped (the policy has no cycles). The price: a
    reference cycle alive at this moment that later becomes garbage is never collected —
    bounded by what is alive at each of an admin's edits."""
    with automatic_gc_paused():
        result = parse_in_child(directory)
        if isinstance(result, Policy):
            gc.freeze()
        return result


class PolicyHolder:
    def __init__(
        self,
        directory: Path | str,
        on_outcome: Callable[[ReloadOutcome], None] | None = None,
    ) -> None:
        """Load the initial policy; raises ``PolicyInvalid`` so a process refuses to start
        with no valid policy rather than run unenforced. (At start nothing else runs yet,
        so this load may block.)"""
        self.directory = Path(directory)
        self._fingerprint = policy_fingerprint(self.directory)
        started = time.monotonic()
        self._current: Policy = load_policy(self.directory)
        # When the policy in force was put in force, and how the last reload went: what the
        # operations console's system page shows (this process's view).
        self.loaded_at = time.time()
        self.last_outcome: ReloadOutcome | None = None
        log.info(
            "Policy %s loaded from %s in %.2f s", self._current.digest[:12], self.directory, time.monotonic() - started
        )
        # Told of every reload attempt, on the loop; may be set after construction.
        self.on_outcome = on_outcome
        self._reloading = False

    @property
    def current(self) -> Policy:
        """The policy in force: always a complete one."""
        return self._current

    async def refresh(self, offload: Offload[Policy | PolicyInvalid]) -> ReloadOutcome | None:
        """Reload if the files changed since the last load; returns the last outcome, or
        None if nothing changed or another reload is already running (it picks up this
        change when it finishes)."""
        if self._reloading:
            return None
        self._reloading = True
        try:
            outcome = None
            # Checked again after each load: an edit saved while parsing is loaded next.
            work = parse if offload is run_here else parse_elsewhere
            while (fingerprint := policy_fingerprint(self.directory)) != self._fingerprint:
                result = await offload(lambda: work(self.directory))
                # Only once parsed: if the parse itself failed unexpectedly (raised), the
                # next poll tries these files again.
                self._fingerprint = fingerprint
                outcome = self._apply(result)
            return outcome
        finally:
            self._reloading = False

    def _apply(self, result: Policy | PolicyInvalid) -> ReloadOutcome:
        if isinstance(result, PolicyInvalid):
            outcome = ReloadOutcome(False, self._current.digest, tuple(result.errors), time.time())
            log.error(
                "Rejected policy edit in %s; keeping policy %s in force:\n%s",
                self.directory,
                self._current.digest[:12],
                result,
            )
        else:
            changed = result.digest != self._current.digest
            self._current = result
            outcome = ReloadOutcome(True, result.digest, at=time.time())
            if changed:
                self.loaded_at = outcome.at
                log.info("Policy %s now in force (from %s)", result.digest[:12], self.directory)
        self.last_outcome = outcome
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        return outcome
