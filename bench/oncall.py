"""Role resolution cost: who holds a role right now, asked for every message to an on-duty
address. 10,000 shifts over 200 roles across 30 days (day/night rota with random gaps and a
second person on some shifts) plus 200 covers; 20,000 random lookups at random instants, given
in hospital local time as the appservice does. Budget: p99 <= 1 ms.

Run: ``.venv/bin/python -m bench.oncall``.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from bench.stats import percentile
from carematrix.oncall.model import Override, Shift
from carematrix.oncall.roster import Roster

ZONE = ZoneInfo("Europe/Berlin")
START = datetime(2026, 11, 1, tzinfo=ZONE)
DAYS = 30
ROLES = 200
SHIFTS = 10_000
COVERS = 200
LOOKUPS = 20_000


def roster_data(seed: int = 11) -> tuple[list[str], list[Shift], list[Override]]:
    """Per role, 12-hour shifts in a row with the odd gap and the odd second person, until the
    hospital has SHIFTS shifts (50 per role, spread over the 30 days)."""
    rng = random.Random(seed)
    roles = [f"unit{i // 4:02d}/role{i % 4}" for i in range(ROLES)]
    shifts: list[Shift] = []
    per_role = SHIFTS // ROLES
    for role in roles:
        cursor = START + timedelta(hours=rng.randrange(0, 12))
        for n in range(per_role):
            length = timedelta(hours=rng.choice((8, 12, 12, 14, 24)))
            staff = f"S{rng.randrange(0, 3000):05d}"
            shifts.append(Shift(role, staff, cursor, cursor + length, f"bench:{role}:{n}"))
            step = length + timedelta(hours=rng.choice((0, 0, 0, 1, 2)))
            if rng.random() < 0.1:
                step -= timedelta(hours=2)  # overlapping hand-over: two people on the role
            cursor += step
    covers = []
    for _ in range(COVERS):
        shift = rng.choice(shifts)
        start = shift.start + timedelta(hours=rng.randrange(0, 4))
        covers.append(
            Override(
                shift.role, "C00001", start, start + timedelta(hours=4), shift.staff_number, "bench"
            )
        )
    return roles, shifts, covers


def measure() -> dict[str, object]:
    roles, shifts, covers = roster_data()
    t0 = time.perf_counter()
    roster = Roster(shifts, covers)
    build_ms = (time.perf_counter() - t0) * 1000

    rng = random.Random(5)
    span = DAYS * 24 * 3600
    queries = [
        (rng.choice(roles), START + timedelta(seconds=rng.randrange(0, span)))
        for _ in range(LOOKUPS)
    ]
    for role, at in queries[:1000]:  # warm-up
        roster.on_duty(role, at)
    samples = []
    found = 0
    for role, at in queries:
        begin = time.perf_counter()
        holders = roster.on_duty(role, at)
        samples.append((time.perf_counter() - begin) * 1000)
        found += bool(holders)
    result: dict[str, object] = {
        "shifts": len(shifts),
        "roles": len(roles),
        "covers": len(covers),
        "build_ms": round(build_ms, 1),
        "on_duty": {
            "n": len(samples),
            "p50_ms": round(percentile(samples, 50), 5),
            "p99_ms": round(percentile(samples, 99), 5),
            "max_ms": round(max(samples), 5),
        },
        "answered_with_someone": round(found / LOOKUPS, 3),
    }
    return result


def main() -> None:
    result = measure()
    lookups = result["on_duty"]
    assert isinstance(lookups, dict)
    print(
        f"on_duty over {result['shifts']} shifts / {result['roles']} roles "
        f"(+{result['covers']} covers), index built in {result['build_ms']} ms",
        flush=True,
    )
    print(
        f"  n={lookups['n']}  p50 {lookups['p50_ms']:.4f} ms  p99 {lookups['p99_ms']:.4f} ms  "
        f"max {lookups['max_ms']:.4f} ms  (someone on duty for "
        f"{result['answered_with_someone']:.0%} of lookups)",
        flush=True,
    )


if __name__ == "__main__":
    main()
