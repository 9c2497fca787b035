"""The Synapse side of ``carematrix.loop_lag``: a reactor timer whose lateness is recorded
(only when ``CAREMATRIX_LOOP_LAG_DIR`` is set; benchmarks set it)."""

from __future__ import annotations

from typing import cast

from twisted.internet import reactor as installed_reactor
from twisted.internet.base import ReactorBase

from carematrix.loop_lag import PERIOD_SECONDS, LagRecorder, recorder_from_env

# Twisted types the installed reactor by its zope interfaces, whose methods a type checker
# reads without ``self``; every Twisted reactor is a ReactorBase.
reactor = cast(ReactorBase, installed_reactor)

_started: set[str] = set()


def start(process: str) -> None:
    """Once per process; a no-op unless the environment asks for it."""
    if process in _started:
        return
    recorder = recorder_from_env(f"synapse-{process}")
    if recorder is None:
        return
    _started.add(process)
    _schedule(recorder)


def _schedule(recorder: LagRecorder) -> None:
    due = reactor.seconds() + PERIOD_SECONDS
    reactor.callLater(PERIOD_SECONDS, _tick, recorder, due)


def _tick(recorder: LagRecorder, due: float) -> None:
    recorder.record(max(0.0, reactor.seconds() - due))
    _schedule(recorder)
