"""How late a process's event loop runs a timer: the measure of a stall, for benchmarks.

Off unless ``CAREMATRIX_LOOP_LAG_DIR`` names a directory. Then each process (every Synapse
process, the appservice) runs a timer every ``PERIOD_SECONDS`` and appends one line per
``WINDOW_SECONDS`` to ``<dir>/<process>.lag``: ``start end max_late_ms ticks`` (wall-clock
seconds). A loop blocked for 1 s shows as a tick ~1,000 ms late; a free loop stays near 0.
The timer itself lives in the process's wiring (Twisted or asyncio); this module only keeps
the figures, so both processes report them alike.

A figure says how long a stall was, not what caused it, so each recorder also has a
``StallTracer``: a watchdog thread that, while the timer is overdue, samples what the loop's
thread is running, and a garbage-collector callback that times every collection. Each stall
of more than ``TRACE_MS`` is one JSON line in ``<dir>/<process>.stalls`` with the stacks seen,
the collections that ran inside it, the CPU time the loop's thread and the whole process used
meanwhile, and how long the loop's thread was ready to run but had no CPU (Linux's
``schedstat``): a loop that ran all along did work on the loop; one that waited in the run
queue had no CPU (other programs on the machine); one that barely ran while the process did
was waiting for the interpreter lock held by another of its threads; one that did neither was
blocked in a system call (a write held up by the disk, say). (A thread sees the loop's stack only when it gets the
interpreter lock, so a long C call such as a collection shows as the Python line that made it.)
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

ENV = "CAREMATRIX_LOOP_LAG_DIR"
PERIOD_SECONDS = 0.005
WINDOW_SECONDS = 0.25
TRACE_MS = 15.0  # a stall longer than this is traced
SAMPLE_SECONDS = 0.002
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class LagWindow:
    start: float
    end: float
    max_late_ms: float
    ticks: int


class LagRecorder:
    def __init__(self, out: TextIO, window_seconds: float = WINDOW_SECONDS, clock: Callable[[], float] = time.time,
                 tracer: StallTracer | None = None) -> None:
        self._out = out
        self._window = window_seconds
        self._clock = clock
        self._start = clock()
        self._max = 0.0
        self._ticks = 0
        self.tracer = tracer

    def record(self, late_seconds: float) -> None:
        """One tick that ran ``late_seconds`` after it was due; writes a line per window."""
        if self.tracer is not None:
            self.tracer.beat()
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
    tracer = StallTracer(path.with_suffix(".stalls").open("a", encoding="utf-8"))  # noqa: SIM115 - as below
    tracer.start()
    return LagRecorder(path.open("a", encoding="ascii"), tracer=tracer)  # noqa: SIM115 - kept open for the process's life


def _stack(frame: FrameType | None, depth: int = 12) -> str:
    """The innermost ``depth`` frames, innermost first: ``file:line function``."""
    parts: list[str] = []
    while frame is not None and len(parts) < depth:
        code = frame.f_code
        parts.append(f"{'/'.join(code.co_filename.rsplit('/', 2)[-2:])}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return " < ".join(parts)


def _run_queue_wait() -> float:
    """Seconds this thread has spent ready to run without a CPU (0 where Linux's per-thread
    ``schedstat`` is not available)."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass
class _Stall:
    began: float  # wall clock of the last beat before it
    stacks: Counter[str] = field(default_factory=Counter)
    collections: list[dict[str, Any]] = field(default_factory=list)


class StallTracer:
    """Watches the thread that calls ``beat`` (the loop's) from a daemon thread."""

    def __init__(self, out: TextIO, trace_ms: float = TRACE_MS, period: float = PERIOD_SECONDS) -> None:
        self._out = out
        self._limit = trace_ms / 1000 + period
        self._thread_id = threading.get_ident()
        self._last = time.monotonic()
        self._cpu = (time.thread_time(), time.process_time(), _run_queue_wait())
        self._stall: _Stall | None = None
        self._lock = threading.Lock()
        self._gc_started = 0.0
        self._gc_collections: list[dict[str, Any]] = []

    def start(self) -> None:
        threading.Thread(target=self._watch, name="loop-stall-tracer", daemon=True).start()
        gc.callbacks.append(self._on_gc)

    def beat(self) -> None:
        """Called by the loop's timer on every tick: ends a stall in progress."""
        now = time.monotonic()
        cpu = (time.thread_time(), time.process_time(), _run_queue_wait())
        with self._lock:
            stall, self._stall = self._stall, None
            took = now - self._last
            self._last = now
            collections, self._gc_collections = self._gc_collections, []
        used, self._cpu = (cpu[0] - self._cpu[0], cpu[1] - self._cpu[1], cpu[2] - self._cpu[2]), cpu
        if took >= self._limit:
            # The watchdog may not have had the interpreter lock once during the stall.
            stall = stall or _Stall(time.time() - took)
            stall.collections = [c for c in collections if c["at"] >= stall.began]
            self._write(stall, took, used)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        ms = (time.perf_counter() - self._gc_started) * 1000
        if ms >= 1.0:
            record = {"at": time.time(), "generation": info.get("generation"), "ms": round(ms, 1),
                      "collected": info.get("collected"), "thread": threading.current_thread().name}
            with self._lock:
                self._gc_collections.append(record)
                del self._gc_collections[:-50]

    def _watch(self) -> None:
        while True:
            time.sleep(SAMPLE_SECONDS)
            now = time.monotonic()
            if now - self._last < self._limit:
                continue
            frame = sys._current_frames().get(self._thread_id)
            stack = _stack(frame)
            with self._lock:
                if self._stall is None:
                    self._stall = _Stall(time.time() - (now - self._last))
                self._stall.stacks[stack] += 1

    def _write(self, stall: _Stall, took: float, used: tuple[float, float, float]) -> None:
        line = {"at": round(stall.began, 3), "stall_ms": round(took * 1000, 1),
                "loop_cpu_ms": round(used[0] * 1000, 1), "process_cpu_ms": round(used[1] * 1000, 1),
                "loop_no_cpu_ms": round(used[2] * 1000, 1),
                "stacks": stall.stacks.most_common(5), "collections": stall.collections}
        self._out.write(json.dumps(line) + "\n")
        self._out.flush()


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
