"""How late a process's event loop runs a timer: the measure of a stall, for benchmarks.

Off unless ``CAREMATRIX_LOOP_LAG_DIR`` names a directory. Then each process (every Synapse
process, the appservice) runs a timer every ``PERIOD_SECONDS`` and appends one line per
``WINDOW_SECONDS`` to ``<dir>/<process>.lag``: ``start end max_late_ms ticks`` (wall-clock
seconds). A loop blocked for 1 s shows as a tick ~1,000 ms late; a free loop stays near 0.
The timer itself lives in the process's wiring (Twisted or asyncio); this module only keeps
the figures, so both processes report them alike.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

ENV = "CAREMATRIX_LOOP_LAG_DIR"
PERIOD_SECONDS = 0.005
WINDOW_SECONDS = 0.25
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class LagWindow:
    start: float
    end: float
    max_late_ms: float
    ticks: int


class LagRecorder:
    def __init__(self, out: TextIO, window_seconds: float = WINDOW_SECONDS, clock: Callable[[], float] = time.time) -> None:
        self._out = out
        self._window = window_seconds
        self._clock = clock
        self._start = clock()
        self._max = 0.0
        self._ticks = 0

    def record(self, late_seconds: float) -> None:
        """One tick that ran ``late_seconds`` after it was due; writes a line per window."""
        self._max = max(self._max, late_seconds)
        self._ticks += 1
        now = self._clock()
        if now - self._start >= self._window:
            self._out.write(f"{self._start:.3f} {now:.3f} {self._max * 1000:.3f} {self._ticks}\n")
            self._out.flush()
            self._start, self._max, self._ticks = now, 0.0, 0


def recorder_from_env(process: str) -> LagRecorder | None:
    """The recorder for ``process`` if the environment asks for one."""
    directory = os.environ.get(ENV)
    if not directory:
        return None
    path = Path(directory) / f"{_UNSAFE.sub('_', process)}.lag"
    path.parent.mkdir(parents=True, exist_ok=True)
    return LagRecorder(path.open("a", encoding="ascii"))  # noqa: SIM115 - kept open for the process's life


async def probe_asyncio_loop(recorder: LagRecorder) -> None:
    """The appservice's timer: runs until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + PERIOD_SECONDS
        await asyncio.sleep(PERIOD_SECONDS)
        recorder.record(max(0.0, loop.time() - due))


def read_lag(path: Path) -> list[LagWindow]:
    windows = []
    for line in path.read_text(encoding="ascii").splitlines():
        parts = line.split()
        if len(parts) == 4:
            windows.append(LagWindow(float(parts[0]), float(parts[1]), float(parts[2]), int(parts[3])))
    return windows


def max_late_ms(windows: list[LagWindow], start: float, end: float) -> float | None:
    """The latest tick that fired within [start, end]; None if none did. A window's line is
    written by the tick that closes it, which after a long stall is the late tick itself, so
    a window counts where it ends (a stall that began just before ``start`` counts in full)."""
    found = [w.max_late_ms for w in windows if start <= w.end <= end]
    return max(found) if found else None
