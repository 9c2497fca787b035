"""A policy edit on a running hospital of 5,000 staff: how long each process's event loop
stalls while the edit is reloaded, and what the HIS sees meanwhile.

One CareMatrix stack (SQLite) with the demo policy plus a synthetic wing (``synthetic_org``:
N staff over a tree of units), synced once so every account exists (without initial
passwords, as with directory sign-in: hashing 5,000 of them would take most of the set-up).
The HIS sends ADT messages over MLLP at a steady rate throughout. Each round waits a quiet
window, then makes an admin's edit (one person's title in staff.yaml, saved as editors save:
a new file moved into place) and waits until Synapse and the appservice enforce it and the
appservice's follow-up org sync is done, plus a margin. Each edit is reported in three
phases: the quiet window before it (the baseline in the same run: what the machine's noise
alone gives), from the edit until both processes enforce it (the reload itself), and the org
sync the appservice then runs (it reads every account and room back from Synapse).

With ``--baseline DIR`` (a checkout of older code) the stack is restarted on the same data
with that code and with this checkout in turn, so both are measured in one run.

Making the 5,000 accounts takes minutes, most of a run; a work directory that already holds
a seeded stack of the same size (``--reload-keep DIR`` of ``python -m bench``; ``seeded.json``
says so) is started again on its data, and each run's edits carry the run's own mark so they
change the policy whatever earlier runs left in it.

Stalls come from each process's loop-lag timer (``carematrix.loop_lag``, switched on by
``CAREMATRIX_LOOP_LAG_DIR``): the latest a 5 ms timer fired in the phase. ACK latency is
timed from when a message was due to be sent (so a message held up behind a stalled one
counts its wait too). Each stall over 15 ms is also traced (``<process>.stalls``: what the
loop was running, which garbage collections ran inside it); the result lists the longest
ones of each phase with their cause.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from bench.clinical_ingest import _adt
from bench.mllp import hl7_deployment, send_paced
from bench.org_sync import synthetic_org
from bench.stats import percentile, summary
from carematrix.loop_lag import ENV as LAG_ENV
from carematrix.loop_lag import PERIOD_SECONDS, max_late_ms, read_lag
from carematrix.policy import PolicyInvalid, load_policy, yamlsrc
from carematrix.policy.holder import Offload, PolicyHolder, parse, run_here
from carematrix_ops.deploy.settings import Deployment
from carematrix_ops.seed import Seeder
from carematrix_ops.supervisor import Stack
from tests.paths import DEMO_POLICY_DIR

EDITED = "S00001"  # whose title each round's edit changes
POLL_SECONDS = 0.2
IN_FORCE_TIMEOUT = 300.0
IN_FORCE_MARGIN = 0.5  # the pollers see a new digest up to this late
PHASES = (("quiet", "before the edit"), ("reload", "edit until in force"), ("org_sync", "the org sync after"))


def bench_policy(directory: Path, staff: int, units: int) -> int:
    """The demo policy with a synthetic wing of ``staff`` people over about ``units`` units;
    returns how many units the wing has."""
    shutil.copytree(DEMO_POLICY_DIR, directory)
    tree, people = synthetic_org(staff, units, root="wing", root_name="Benchmark Wing")
    hospital = yaml.safe_load((directory / "hospital.yaml").read_text(encoding="utf-8"))
    hospital["units"].append(tree)
    (directory / "hospital.yaml").write_text(yaml.safe_dump(hospital, allow_unicode=True), encoding="utf-8")
    listed = yaml.safe_load((directory / "staff.yaml").read_text(encoding="utf-8"))
    listed["staff"] += people
    (directory / "staff.yaml").write_text(yaml.safe_dump(listed, allow_unicode=True), encoding="utf-8")

    def count(unit: dict) -> int:
        return 1 + sum(count(child) for child in unit.get("children", []))

    return count(tree)


def edit_title(directory: Path, title: str) -> None:
    """Change one person's title, saved the way editors save (write aside, rename over)."""
    path = directory / "staff.yaml"
    text = path.read_text(encoding="utf-8")
    text, n = re.subn(rf"(staff_number: {EDITED}\n  title: )[^\n]*", rf"\g<1>{title}", text, count=1)
    if n != 1:
        raise RuntimeError(f"{EDITED} not found in {path}")
    aside = path.with_suffix(".yaml.saving")
    aside.write_text(text, encoding="utf-8")
    os.replace(aside, path)


@dataclass
class Observed:
    """What the pollers saw last: each process's policy digest and the appservice's last org sync."""

    synapse: str = ""
    appservice: str = ""
    org_sync: str = ""
    acks: list[tuple[float, float]] = field(default_factory=list)  # (wall time due, ms)


async def _poll(session: aiohttp.ClientSession, d: Deployment, seen: Observed, stop: asyncio.Event) -> None:
    synapse = f"{d.settings.homeserver_url}/_synapse/client/carematrix/policy"
    health = f"{d.settings.appservice_url}/_carematrix/health"
    while not stop.is_set():
        try:
            async with session.get(synapse) as resp:
                seen.synapse = (await resp.json())["digest"]
            async with session.get(health) as resp:
                body = await resp.json()
                seen.appservice = body["policy_digest"]
                seen.org_sync = (body.get("org_sync") or {}).get("policy_digest", "")
        except (aiohttp.ClientError, OSError, KeyError, ValueError):
            pass
        await asyncio.sleep(POLL_SECONDS)


async def _until_in_force(seen: Observed, old: str) -> tuple[float, float, float]:
    """Seconds from now until Synapse, the appservice and its org sync have a new digest."""
    t0 = time.monotonic()
    marks: dict[str, float] = {}
    while len(marks) < 3:
        if time.monotonic() - t0 > IN_FORCE_TIMEOUT:
            raise RuntimeError(f"the edit was not in force after {IN_FORCE_TIMEOUT:.0f} s: {seen}")
        now = time.monotonic() - t0
        if seen.synapse and seen.synapse != old:
            marks.setdefault("synapse", now)
        if seen.appservice and seen.appservice != old:
            marks.setdefault("appservice", now)
            if seen.org_sync == seen.appservice:
                marks.setdefault("org_sync", now)
        await asyncio.sleep(0.05)
    return marks["synapse"], marks["appservice"], marks["org_sync"]


async def _lateness_during(work: Callable[[], Awaitable[object]]) -> tuple[list[float], float]:
    """How late a 5 ms timer fires on this loop while ``work`` runs; and how long it took."""
    loop = asyncio.get_running_loop()
    late: list[float] = []
    done = False

    async def tick() -> None:
        while not done:
            due = loop.time() + PERIOD_SECONDS
            await asyncio.sleep(PERIOD_SECONDS)
            late.append((loop.time() - due) * 1000)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(PERIOD_SECONDS * 4)
    started = time.perf_counter()
    await work()
    took = time.perf_counter() - started
    done = True
    await ticker
    return late, took


async def in_process(policy_dir: Path, repeats: int = 5) -> dict:
    """One process, no stack: an asyncio loop's timer while the policy is loaded as at first
    (PyYAML's own reader, on the loop), with today's reader on the loop, in a thread (the
    previous way), and as now (parsed in a child process, rebuilt in a thread), beside the
    same timer left alone for as long, taking turns so machine noise hits them alike."""
    holder = PolicyHolder(policy_dir)
    staff = policy_dir / "staff.yaml"
    before = "first: PyYAML's reader, on the loop"
    thread = "before: in a thread"
    now = "now: in a child process"
    samples: dict[str, list[float]] = {"idle": [], before: [], "on the loop": [], thread: [], now: []}
    took: dict[str, list[float]] = {before: [], "on the loop": [], thread: [], now: []}

    async def as_first() -> None:
        fast, yamlsrc.LIBYAML = yamlsrc.LIBYAML, False
        try:
            load_policy(policy_dir)
        finally:
            yamlsrc.LIBYAML = fast

    async def in_a_thread() -> None:
        if isinstance(await asyncio.to_thread(parse, policy_dir), PolicyInvalid):
            raise RuntimeError("the policy did not parse")

    async def reload(offload: Offload) -> None:
        st = staff.stat()
        os.utime(staff, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same content, parsed again
        if (await holder.refresh(offload)) is None:
            raise RuntimeError("the reload did not run")

    ways: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        (before, as_first), ("on the loop", lambda: reload(run_here)), (thread, in_a_thread),
        (now, lambda: reload(asyncio.to_thread)),
    ]
    for _ in range(repeats):
        for label, work in ways:
            late, seconds = await _lateness_during(work)
            samples[label] += late
            took[label].append(seconds)
        late, _ = await _lateness_during(lambda: asyncio.sleep(statistics.fmean(took[now])))
        samples["idle"] += late
    return {
        label: {"ticks": len(late), "max_late_ms": round(max(late), 1), "p99_late_ms": round(percentile(late, 99), 1)}
        | ({"reload_s": round(statistics.median(took[label]), 2)} if label in took else {})
        for label, late in samples.items()
    }


def _window(lag: dict[str, list], seen: Observed, start: float, end: float) -> dict:
    acks = [ms for due, ms in seen.acks if start <= due <= end]
    return {
        "seconds": round(end - start, 2),
        "synapse_max_stall_ms": max_late_ms(lag["synapse"], start, end),
        "appservice_max_stall_ms": max_late_ms(lag["appservice"], start, end),
        "ack_ms": acks,
    }


def _start(d: Deployment, lag_dir: Path, code: Path | None) -> Stack:
    """The stack's processes, running ``code`` (a checkout) if given, else this one's."""
    saved = {k: os.environ.get(k) for k in (LAG_ENV, "PYTHONPATH")}
    os.environ[LAG_ENV] = str(lag_dir)
    if code is not None:
        os.environ["PYTHONPATH"] = str(code)
    try:
        stack = Stack(d)
        stack.start()
        return stack
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def _rounds(d: Deployment, first: int, rounds: int, rate: float, quiet: float, margin: float,
                  settle: float, run_mark: str) -> tuple[Observed, list]:
    seen, stop = Observed(), asyncio.Event()
    windows = []
    async with aiohttp.ClientSession() as session:
        poller = asyncio.create_task(_poll(session, d, seen, stop))
        try:
            await asyncio.sleep(settle)  # the freshly started processes' own start-up work
            for r in range(first, first + rounds):
                # A fresh sender each round: a backlog never carries over from one to the next.
                sending = asyncio.Event()
                sender = asyncio.create_task(send_paced(d.settings.hl7_port, rate, sending, lambda i: _adt(900_000 + i),
                                                     seen.acks))
                try:
                    await asyncio.sleep(quiet)
                    old = seen.synapse
                    edited_at = time.time()
                    edit_title(d.settings.policy_dir, f"Nurse, edit {r + 1} of run {run_mark}")
                    marks = await _until_in_force(seen, old)
                    await asyncio.sleep(margin)
                    windows.append((edited_at - quiet, edited_at, time.time(), marks))
                finally:
                    sending.set()
                    await asyncio.wait_for(sender, 60)
            await asyncio.sleep(0.5)  # the last lag lines are written
        finally:
            stop.set()
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
    return seen, windows


def _seeded(work: Path, staff: int, units: int) -> tuple[Deployment, int, float]:
    """The deployment in ``work`` with the policy and every account made: made now, or by an
    earlier run of the same size (``seeded.json``). Returns it, the wing's unit count and how
    long seeding took (in whichever run did it)."""
    policy_dir = work / "policy"
    marker = work / "seeded.json"
    if marker.exists():
        made = json.loads(marker.read_text(encoding="utf-8"))
        if (made["staff"], made["units"]) == (staff, units):
            return hl7_deployment(work, policy_dir=policy_dir, demo=False), made["unit_count"], made["seeded_s"]
        raise RuntimeError(f"{work} was seeded with {made['staff']} staff / {made['units']} units; use another directory")
    unit_count = bench_policy(policy_dir, staff, units)
    d = hl7_deployment(work, policy_dir=policy_dir, demo=False)
    stack = _start(d, work / "lag" / "seed", None)
    try:
        t0 = time.monotonic()
        Seeder(d).run()
        seeded_s = time.monotonic() - t0
    finally:
        stack.stop()
    marker.write_text(json.dumps({"staff": staff, "units": units, "unit_count": unit_count,
                                  "seeded_s": round(seeded_s, 1)}), encoding="utf-8")
    return d, unit_count, seeded_s


def read_stalls(path: Path) -> list[dict]:
    """The traced stalls of one process (``carematrix.loop_lag.StallTracer``)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def stall_cause(stall: dict) -> str:
    """What a traced stall waited for (``carematrix.loop_lag.StallTracer``), the largest part
    of it: garbage collection; work on the loop; no CPU free (the loop's thread was ready but
    the machine's other programs had the cores); the interpreter lock (other threads of the
    process ran); or a blocked system call (the loop neither ran nor waited for a CPU: a write
    held up by the disk, say)."""
    wall = stall["stall_ms"]
    if stall["collections"] and sum(c["ms"] for c in stall["collections"]) >= wall / 2:
        return "garbage collection"
    loop = stall.get("loop_cpu_ms", 0.0)
    no_cpu = stall.get("loop_no_cpu_ms", 0.0)
    others = max(0.0, min(stall.get("process_cpu_ms", 0.0) - loop, wall - loop - no_cpu))
    blocked = max(0.0, wall - loop - no_cpu - others)
    parts = {"work on the loop": loop, "no CPU free": no_cpu, "lock held by another thread": others,
             "blocked in a system call": blocked}
    return max(parts, key=lambda k: parts[k])


def _traced(stalls: list[dict], start: float, end: float, top: int = 3) -> list[dict]:
    """The ``top`` longest traced stalls that ended within [start, end], with their cause:
    the stack seen most often (innermost frames) and the collections inside."""
    ended = [s for s in stalls if start <= s["at"] + s["stall_ms"] / 1000 <= end]
    out = []
    for s in sorted(ended, key=lambda s: -s["stall_ms"])[:top]:
        stack = s["stacks"][0][0] if s["stacks"] else "(not sampled)"
        out.append({"stall_ms": s["stall_ms"], "cause": stall_cause(s), "loop_cpu_ms": s.get("loop_cpu_ms"),
                    "loop_no_cpu_ms": s.get("loop_no_cpu_ms"), "process_cpu_ms": s.get("process_cpu_ms"),
                    "stack": " < ".join(stack.split(" < ")[:4]),
                    "gc_ms": [(c["generation"], c["ms"]) for c in s["collections"]]})
    return out


def _by_cause(stalls: list[dict], start: float, end: float) -> dict[str, float]:
    """The longest traced stall of each cause that ended within [start, end]."""
    out: dict[str, float] = {}
    for s in stalls:
        if start <= s["at"] + s["stall_ms"] / 1000 <= end:
            cause = stall_cause(s)
            out[cause] = max(out.get(cause, 0.0), s["stall_ms"])
    return out


async def measure(work: Path, staff: int = 5000, units: int = 20, rounds: int = 3, rate: float = 20.0,
                  baseline: Path | None = None, passes: int = 1, quiet: float = 8.0, margin: float = 2.0,
                  settle: float = 20.0) -> dict:
    """``baseline``: a checkout of other code (e.g. ``git worktree add DIR COMMIT``) run on the
    same data in the same run, passes alternating (baseline first, then this code first)."""
    work.mkdir(parents=True, exist_ok=True)
    d, unit_count, seeded_s = _seeded(work, staff, units)
    shutil.rmtree(work / "lag" / "runs", ignore_errors=True)  # an earlier run's figures
    alone = await in_process(work / "policy")
    run_mark = time.strftime("%H%M%S")
    codes: list[tuple[str, Path | None]] = [("this checkout", None)]
    if baseline is not None:
        codes.insert(0, ("baseline", baseline))
    collected: dict[str, list[dict]] = {label: [] for label, _ in codes}
    edits = 0
    for p in range(passes):
        for label, code in codes if p % 2 == 0 else codes[::-1]:
            lag_dir = work / "lag" / "runs" / f"{p}-{label.replace(' ', '-')}"
            stack = _start(d, lag_dir, code)
            try:
                seen, windows = await _rounds(d, edits, rounds, rate, quiet, margin, settle, run_mark)
            finally:
                stack.stop()
            edits += rounds
            lag = {"synapse": read_lag(lag_dir / "synapse-main.lag"), "appservice": read_lag(lag_dir / "appservice.lag")}
            stalls = {"synapse": read_stalls(lag_dir / "synapse-main.stalls"),
                      "appservice": read_stalls(lag_dir / "appservice.stalls")}
            for quiet_start, edited_at, end, marks in windows:
                in_force = edited_at + max(marks[0], marks[1]) + IN_FORCE_MARGIN
                collected[label].append({
                    "by_cause": {f"{kind}_{process}": _by_cause(found, start, stop) for process, found in stalls.items()
                                 for kind, start, stop in (("quiet", quiet_start, edited_at),
                                                           ("reload", edited_at, in_force), ("org_sync", in_force, end))},
                    "traced": {f"{kind}_{process}": _traced(found, start, stop) for process, found in stalls.items()
                               for kind, start, stop in (("quiet", quiet_start, edited_at),
                                                         ("reload", edited_at, in_force), ("org_sync", in_force, end))},
                    "in_force_s": {"synapse": round(marks[0], 2), "appservice": round(marks[1], 2),
                                   "org_sync_done": round(marks[2], 2)},
                    "quiet": _window(lag, seen, quiet_start, edited_at),
                    "reload": _window(lag, seen, edited_at, edited_at + max(marks[0], marks[1]) + IN_FORCE_MARGIN),
                    "org_sync": _window(lag, seen, edited_at + max(marks[0], marks[1]) + IN_FORCE_MARGIN, end),
                })
    return {
        "benchmark": f"policy reload, demo policy + {staff:,} staff in {unit_count} more units, MLLP ADT at {rate:g}/s, SQLite",
        "seeded_s": round(seeded_s, 1),
        "in_process": alone,
        "code": {label: str(code) if code else "this checkout" for label, code in codes},
        "results": {label: _summarise(rounds_out) for label, rounds_out in collected.items()},
    }


def _summarise(rounds: list[dict]) -> dict:
    def worst(kind: str, key: str) -> float | None:
        found = [r[kind][key] for r in rounds if r[kind][key] is not None]
        return max(found) if found else None

    out: dict = {"rounds": len(rounds)}
    for kind, _ in PHASES:
        acks = [ms for r in rounds for ms in r[kind]["ack_ms"]]
        out[kind] = {
            "synapse_max_stall_ms": worst(kind, "synapse_max_stall_ms"),
            "appservice_max_stall_ms": worst(kind, "appservice_max_stall_ms"),
            "ack": summary(acks) | {"max_ms": round(max(acks), 3)} if acks else None,
        }
        for process in ("synapse", "appservice"):
            causes: dict[str, float] = {}
            for r in rounds:
                for cause, ms in r["by_cause"][f"{kind}_{process}"].items():
                    causes[cause] = max(causes.get(cause, 0.0), ms)
            out[kind][f"{process}_by_cause"] = dict(sorted(causes.items(), key=lambda c: -c[1]))
    out["per_round"] = [
        {"in_force_s": r["in_force_s"]}
        | {f"{kind}_{k}": r[kind][k] for kind, _ in PHASES for k in ("synapse_max_stall_ms", "appservice_max_stall_ms")}
        | {"traced": r["traced"]}
        for r in rounds
    ]
    return out


def format_result(result: dict) -> str:
    lines = [result["benchmark"], f"  (seeded in {result['seeded_s']} s)", "  in one process, a 5 ms timer on an asyncio loop:"]
    for label, r in result["in_process"].items():
        took = f", reload {r['reload_s']} s" if "reload_s" in r else ""
        lines.append(f"    {label:<40} late max {r['max_late_ms']} ms, p99 {r['p99_late_ms']} ms ({r['ticks']} ticks{took})")
    for label, res in result["results"].items():
        lines.append(f"  {label} ({result['code'][label]}), {res['rounds']} edits")
        lines.append(f"    {'':<22}{'Synapse stall':>15}{'appservice stall':>18}{'ACK p50':>10}{'ACK p99':>10}{'ACK max':>10}")
        for kind, name in PHASES:
            k = res[kind]
            ack = k["ack"] or {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
            lines.append(
                f"    {name:<22}{k['synapse_max_stall_ms'] or 0:>12.1f} ms{k['appservice_max_stall_ms'] or 0:>15.1f} ms"
                f"{ack['p50_ms']:>7.1f} ms{ack['p99_ms']:>7.1f} ms{ack['max_ms']:>7.1f} ms (n {ack.get('n', 0)})"
            )
            for process in ("synapse", "appservice"):
                causes = k.get(f"{process}_by_cause") or {}
                if causes:
                    lines.append(f"      longest {process} stall by cause: "
                                 + ", ".join(f"{cause} {ms:.0f} ms" for cause, ms in causes.items()))
        for i, r in enumerate(res["per_round"], 1):
            f = r["in_force_s"]
            lines.append(
                f"    edit {i}: in force in Synapse {f['synapse']} s, appservice {f['appservice']} s, org sync done "
                f"{f['org_sync_done']} s; stalls (Synapse, appservice) before {r['quiet_synapse_max_stall_ms']}, "
                f"{r['quiet_appservice_max_stall_ms']}; until in force {r['reload_synapse_max_stall_ms']}, "
                f"{r['reload_appservice_max_stall_ms']}; org sync {r['org_sync_synapse_max_stall_ms']}, "
                f"{r['org_sync_appservice_max_stall_ms']} ms"
            )
            for where, found in r["traced"].items():
                for t in found:
                    if t["stall_ms"] >= 20:
                        lines.append(f"      {where}: {t['stall_ms']} ms, {t['cause']} (loop ran {t['loop_cpu_ms']} ms, "
                                     f"waited for a CPU {t['loop_no_cpu_ms']} ms, process ran {t['process_cpu_ms']} ms): "
                                     f"{t['stack']}; collections {t['gc_ms']}")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    import json
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m bench.policy_reload")
    parser.add_argument("--staff", type=int, default=5000)
    parser.add_argument("--units", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--baseline", type=Path, help="a checkout of the code to compare with")
    parser.add_argument("--passes", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="carematrix-bench-reload-") as tmp:
        result = asyncio.run(measure(Path(tmp), args.staff, args.units, args.rounds, args.rate, args.baseline, args.passes))
    print(format_result(result))
    print(json.dumps(result))
