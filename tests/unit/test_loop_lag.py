"""The benchmarks' stall tracer: a loop held up is reported with what held it up."""

from __future__ import annotations

import asyncio
import io
import json
import time

from bench.policy_reload import stall_cause
from carematrix.loop_lag import LagRecorder, StallTracer, probe_asyncio_loop


def _held_up_by_sleep() -> None:
    time.sleep(0.5)


async def test_a_blocked_loop_is_traced_with_the_function_that_blocked_it():
    out = io.StringIO()
    tracer = StallTracer(out)
    tracer.start()
    probe = asyncio.create_task(probe_asyncio_loop(LagRecorder(io.StringIO(), tracer=tracer)))
    try:
        await asyncio.sleep(0.05)
        _held_up_by_sleep()
        await asyncio.sleep(0.05)
    finally:
        probe.cancel()
    stalls = [json.loads(line) for line in out.getvalue().splitlines()]
    held = [s for s in stalls if s["stall_ms"] >= 500]
    assert len(held) == 1, stalls
    assert any("_held_up_by_sleep" in stack for stack, _ in held[0]["stacks"])
    # Sleeping is neither work on the loop nor waiting for a CPU.
    assert stall_cause(held[0]) == "blocked in a system call"


def test_causes_are_told_apart_by_where_the_time_went():
    def stall(**parts: float) -> dict:
        return {"stall_ms": 100.0, "collections": [], **parts}

    assert stall_cause(stall(loop_cpu_ms=90, loop_no_cpu_ms=5, process_cpu_ms=92)) == "work on the loop"
    assert stall_cause(stall(loop_cpu_ms=5, loop_no_cpu_ms=90, process_cpu_ms=8)) == "no CPU free"
    assert stall_cause(stall(loop_cpu_ms=5, loop_no_cpu_ms=5, process_cpu_ms=85)) == "lock held by another thread"
    assert stall_cause(stall(loop_cpu_ms=60, collections=[{"ms": 70.0}])) == "garbage collection"
