"""The on-call board: for every on-duty role, who holds it now and who next, the roster gaps
of the coming day and the covers in force — read from the same roster index ``!oncall``
lists (``carematrix.oncall.roster``). Pure: the appservice hands in its roster, overrides and
clock, and serves the result as JSON; the console renders it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from carematrix.oncall.model import Override
from carematrix.oncall.roster import Roster
from carematrix.policy.oncall import OncallPolicy
from carematrix.policy.org import Unit

GAP_HORIZON = timedelta(hours=24)  # gaps this far ahead are highlighted


def board(
    oncall: OncallPolicy,
    units: dict[str, Unit],
    roster: Roster,
    overrides: Sequence[Override],
    now: datetime,
    name: Callable[[str], str],
) -> dict[str, Any]:
    """The board as plain JSON data, times in the hospital's zone (ISO 8601 with offset)."""
    tz = ZoneInfo(oncall.timezone)
    local_now = now.astimezone(tz)
    horizon = local_now + GAP_HORIZON
    rows = []
    for role in sorted(oncall.roles.values(), key=lambda r: (r.unit, r.id)):
        holders = roster.on_duty(role.id, local_now)
        change = roster.next_change(role.id, local_now)
        after = roster.on_duty(role.id, change) if change is not None else holders
        gaps = [
            {"from": a.isoformat(), "until": b.isoformat()}
            for a, b in roster.gaps(role.id, local_now, horizon)
        ]
        covers = [
            {
                "staff": name(o.staff_number), "replaces": name(o.replaces) if o.replaces else None,
                "from": o.start.astimezone(tz).isoformat(), "until": o.end.astimezone(tz).isoformat(),
                "kind": o.kind, "by": name(o.by),
            }
            for o in overrides
            if o.role == role.id and o.end > now and o.start < horizon
        ]
        unit = units.get(role.unit)
        rows.append({
            "role": role.id, "role_name": role.name, "unit": role.unit,
            "unit_name": unit.name if unit else role.unit,
            "now": [name(s) for s in holders], "gap_now": not holders,
            "until": change.astimezone(tz).isoformat() if change is not None else None,
            "next": [name(s) for s in after] if change is not None else None,
            "gaps": gaps, "covers": covers,
        })
    return {"timezone": oncall.timezone, "now": local_now.isoformat(), "roles": rows}
