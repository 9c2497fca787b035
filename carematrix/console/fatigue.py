"""The alarm-fatigue report: how often each on-duty role and each person was interrupted, per
shift and per week — pages, critical alerts, after-hours notifications, how many escalated,
and how long acknowledgement took. Pure: the appservice hands in the week's pages (no
patient data: role, times, priority, who was paged, the step reached, who acknowledged).

A page interrupts every person it paged; it counts once for its role. Shifts are the day
(08:00-20:00) and the night (20:00-08:00, belonging to the date it started) in the hospital's
time zone; after hours is outside 08:00-18:00 Monday to Friday."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from statistics import median
from zoneinfo import ZoneInfo

DAY_START, NIGHT_START = time(8, 0), time(20, 0)
OFFICE_START, OFFICE_END = time(8, 0), time(18, 0)
# Time-to-acknowledge buckets (upper bounds in seconds); the last catches the rest.
TTA_BUCKETS: tuple[tuple[str, float], ...] = (
    ("<1 min", 60), ("1-5 min", 300), ("5-15 min", 900), (">15 min", float("inf")),
)


@dataclass(frozen=True)
class PageFact:
    role: str
    created_at: datetime  # timezone-aware
    priority: str  # routine | urgent | critical
    paged: tuple[str, ...]  # staff numbers, in order
    step: int  # 0: never escalated
    acked_by: str | None = None
    acked_at: datetime | None = None


@dataclass
class Tally:
    pages: int = 0
    critical: int = 0
    after_hours: int = 0
    escalated: int = 0
    ack_seconds: list[float] = field(default_factory=list)

    def add(self, fact: PageFact, tz: ZoneInfo, ack_seconds: float | None) -> None:
        self.pages += 1
        self.critical += fact.priority == "critical"
        self.after_hours += after_hours(fact.created_at, tz)
        self.escalated += fact.step > 0
        if ack_seconds is not None:
            self.ack_seconds.append(ack_seconds)

    @property
    def escalation_rate(self) -> float:
        return self.escalated / self.pages if self.pages else 0.0

    @property
    def unacknowledged(self) -> int:
        return self.pages - len(self.ack_seconds)

    def tta_median(self) -> float | None:
        return median(self.ack_seconds) if self.ack_seconds else None

    def tta_p90(self) -> float | None:
        if not self.ack_seconds:
            return None
        ordered = sorted(self.ack_seconds)
        return ordered[max(0, -(-len(ordered) * 9 // 10) - 1)]  # nearest rank

    def tta_buckets(self) -> dict[str, int]:
        out = dict.fromkeys((name for name, _ in TTA_BUCKETS), 0)
        for seconds in self.ack_seconds:
            out[next(name for name, bound in TTA_BUCKETS if seconds < bound)] += 1
        return out


@dataclass(frozen=True)
class Row:
    kind: str  # "role" | "person"
    who: str  # role ID or staff number
    period: str  # "week" or a shift label ("2026-12-04 day", "2026-12-04 night")
    tally: Tally


def after_hours(at: datetime, tz: ZoneInfo) -> bool:
    local = at.astimezone(tz)
    return local.weekday() >= 5 or not OFFICE_START <= local.time() < OFFICE_END


def shift_of(at: datetime, tz: ZoneInfo) -> str:
    """"2026-12-04 day" or "2026-12-04 night" (a night belongs to the date it began)."""
    local = at.astimezone(tz)
    if DAY_START <= local.time() < NIGHT_START:
        return f"{local.date().isoformat()} day"
    started = local.date() if local.time() >= NIGHT_START else local.date() - timedelta(days=1)
    return f"{started.isoformat()} night"


def week_bounds(week: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[Monday 00:00, next Monday 00:00) of an ISO week ("2026-W49") in the hospital's zone."""
    year, _, number = week.partition("-W")
    monday = date.fromisocalendar(int(year), int(number), 1)
    start = datetime.combine(monday, time(0, 0), tz)
    return start, start + timedelta(days=7)


def week_of(at: datetime, tz: ZoneInfo) -> str:
    year, number, _ = at.astimezone(tz).isocalendar()
    return f"{year}-W{number:02d}"


def report(facts: Iterable[PageFact], tz: ZoneInfo) -> list[Row]:
    """Rows per role and per person, for the whole week and for each shift, sorted."""
    tallies: dict[tuple[str, str, str], Tally] = {}

    def tally(kind: str, who: str, period: str) -> Tally:
        return tallies.setdefault((kind, who, period), Tally())

    for fact in facts:
        shift = shift_of(fact.created_at, tz)
        acked = (fact.acked_at - fact.created_at).total_seconds() if fact.acked_at else None
        for period in ("week", shift):
            tally("role", fact.role, period).add(fact, tz, acked)
            for person in dict.fromkeys(fact.paged):
                # A person's time to acknowledge counts the pages they acknowledged themselves.
                tally("person", person, period).add(fact, tz, acked if fact.acked_by == person else None)
    order = {"role": 0, "person": 1}
    return [
        Row(kind, who, period, t)
        for (kind, who, period), t in sorted(tallies.items(), key=lambda kv: (order[kv[0][0]], kv[0][1], kv[0][2] != "week", kv[0][2]))
    ]


CSV_FIELDS = (
    "kind", "who", "period", "pages", "critical", "after_hours", "escalated", "escalation_rate",
    "acknowledged", "tta_median_s", "tta_p90_s", *(f"tta {name}" for name, _ in TTA_BUCKETS),
)


def as_dicts(rows: Sequence[Row]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for r in rows:
        t = r.tally
        med, p90 = t.tta_median(), t.tta_p90()
        out.append({
            "kind": r.kind, "who": r.who, "period": r.period, "pages": t.pages, "critical": t.critical,
            "after_hours": t.after_hours, "escalated": t.escalated, "escalation_rate": round(t.escalation_rate, 3),
            "acknowledged": len(t.ack_seconds),
            "tta_median_s": None if med is None else round(med), "tta_p90_s": None if p90 is None else round(p90),
            **{f"tta {name}": n for name, n in t.tta_buckets().items()},
        })
    return out


def to_csv(rows: Sequence[Row]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for d in as_dicts(rows):
        writer.writerow({k: "" if v is None else v for k, v in d.items()})
    return out.getvalue()
