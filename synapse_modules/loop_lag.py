"""The Synapse side of ``carematrix.loop_lag``: a reactor timer whose lateness is recorded
(only when ``CAREMATRIX_LOOP_LAG_DIR`` is set; benchmarks set it)."""

from __future__ import annotations

from twisted.internet import reactor

from carematrix.loop_lag import PERIOD_SECONDS, LagRecorder, recorder_from_env

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
    due = reactor.seconds() + PERIOD_SECONDS  # type: ignore[attr-defined]
    reactor.callLater(PERIOD_SECONDS, _tick, recorder, due)  # type: ignore[attr-defined]


def _tick(recorder: LagRecorder, due: float) -> None:
    recorder.record(max(0.0, reactor.seconds() - due))  # type: ignore[attr-defined]
    _schedule(recorder)
