"""Checking one VEVENT as a shift template: times, role and who holds it.

Each VEVENT is checked once, before recurrence expansion, so a weekly shift with a bad role
yields one error at its line instead of one per week.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from icalendar import Component, vBroken, vDDDTypes

from bridges.roster.config import FeedConfig
from bridges.roster.ical_text import nominal_and_exact
from bridges.roster.mapping import Unmapped, role_for, staff_for
from bridges.roster.times import add_nominal_and_exact, localize, show, to_utc


@dataclass(frozen=True)
class ShiftTemplate:
    """What every occurrence of one VEVENT shares. ``duration`` is (nominal days, exact
    seconds) when the event uses DURATION, None when it uses DTEND."""

    where: str
    role: str
    staff_numbers: tuple[str, ...]
    duration: tuple[int, int] | None


def _as_list(value: object) -> list[Any]:
    """icalendar gives a repeated property as a list and a single one as the value."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _time(event: Component, name: str, problems: list[str]) -> datetime | None:
    """None when absent, unreadable (icalendar already recorded why) or unusable."""
    prop = event.get(name)
    if prop is None or isinstance(prop, vBroken):
        return None
    value = prop.dt
    if isinstance(value, date) and not isinstance(value, datetime):
        if name == "DTSTART":
            problems.append(f"all-day event on {value.isoformat()}: a shift needs a start "
                            "and an end time")
        else:
            problems.append(f"{name} is a date but DTSTART a date-time")
        return None
    if not isinstance(value, datetime):
        problems.append(f"{name} is not a date-time")
        return None
    tzid = prop.params.get("TZID")
    if tzid and value.tzinfo is None:
        # icalendar silently treats an unresolvable TZID as floating time; that would put
        # the shift in config.timezone, which may be hours off.
        problems.append(f"{name} uses unknown time zone '{tzid}' (not an IANA or Windows "
                        "name, and no VTIMEZONE defines it)")
        return None
    return value


def _check_end(event: Component, start: datetime, raw_duration: str | None,
                 config: FeedConfig, problems: list[str]) -> tuple[int, int] | None:
    """Checks the first occurrence only: later ones are checked after expansion, but a
    template that is already backwards should be reported once, at its line."""
    has_end, has_duration = "DTEND" in event, "DURATION" in event
    if has_end and has_duration:
        problems.append("VEVENT has both DTEND and DURATION")
        return None
    if not has_end and not has_duration:
        problems.append("VEVENT has neither DTEND nor DURATION, so the shift never ends")
        return None
    local_start = localize(start, config.zone)
    if has_end:
        end = _time(event, "DTEND", problems)
        if end is None:
            return None
        local_end = localize(end, config.zone)
        duration = None
        end_utc = to_utc(end, config.zone)
    else:
        prop = event["DURATION"]
        if isinstance(prop, vBroken):
            return None
        duration = nominal_and_exact(raw_duration or "")
        if duration is None:
            if not isinstance(prop, vDDDTypes) or not isinstance(prop.dt, timedelta):
                problems.append("DURATION is not a duration")
                return None
            duration = (0, int(prop.dt.total_seconds()))
        end_utc = add_nominal_and_exact(local_start, *duration)
        local_end = end_utc.astimezone(local_start.tzinfo)
    if end_utc <= to_utc(start, config.zone):
        problems.append(f"end {show(local_end)} is not after start {show(local_start)}")
    return duration


def _role_labels(event: Component, config: FeedConfig) -> list[str]:
    if config.role_from == "summary":
        return [str(event.get("SUMMARY", ""))]
    return [str(c) for prop in _as_list(event.get("CATEGORIES")) for c in prop.cats]


def _people(event: Component) -> list[list[str]]:
    """One identifier list per person: CN first (often the staff number or a name the
    config maps), then the mailto address."""
    people = []
    for attendee in _as_list(event.get("ATTENDEE")):
        address = str(attendee)
        if address.lower().startswith("mailto:"):
            address = address[len("mailto:"):]
        people.append([str(attendee.params.get("CN", "")), address])
    if not people:
        people = [[str(v)] for v in _as_list(event.get("X-STAFF-NUMBER"))]
    return people


def check_event(event: Component, where: str, raw_duration: str | None,
                config: FeedConfig) -> tuple[ShiftTemplate | None, list[str]]:
    """Returns the template, or None with every problem found in the event."""
    problems: list[str] = []
    duration: tuple[int, int] | None = None
    if "DTSTART" not in event:
        problems.append("VEVENT has no DTSTART")
    else:
        start = _time(event, "DTSTART", problems)
        if start is not None:
            duration = _check_end(event, start, raw_duration, config, problems)
    role = None
    labels = [label for label in _role_labels(event, config) if label.strip()]
    if not labels:
        problems.append(f"VEVENT has no {config.role_from.upper()} to take the role from")
    else:
        try:
            role = role_for(labels, config)
        except Unmapped as exc:
            problems.append(str(exc))
    staff: list[str] = []
    people = _people(event)
    if not people:
        problems.append("VEVENT has no ATTENDEE or X-STAFF-NUMBER, so nobody holds the shift")
    for identifiers in people:
        try:
            staff.append(staff_for(identifiers, config))
        except Unmapped as exc:
            problems.append(str(exc))
    if problems or role is None:
        return None, problems
    return ShiftTemplate(where, role, tuple(dict.fromkeys(staff)), duration), problems
