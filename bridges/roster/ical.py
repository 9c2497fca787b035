"""RFC 5545 roster feeds: one VEVENT (possibly recurring) per shift or shift pattern.

Parsing and recurrence expansion are left to ``icalendar`` and ``recurring-ical-events``;
this module adds what a roster needs on top: line numbers, shift-specific checks, and DST-
correct end times.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import recurring_ical_events
from icalendar import Calendar, Component

from bridges.roster.config import FeedConfig
from bridges.roster.ical_event import ShiftTemplate, check_event
from bridges.roster.ical_text import scan
from bridges.roster.text import decode
from bridges.roster.times import add_nominal_and_exact, localize, show, to_utc
from carematrix.oncall.model import FeedError, FeedInvalid, Shift

TEMPLATE_TAG = "X-CAREMATRIX-TEMPLATE"  # survives into occurrences, which are copies
# recurring-ical-events compares floating times without knowing config.timezone and applies
# DURATION by wall clock; a wider query window absorbs both, window.select() trims exactly.
QUERY_MARGIN = timedelta(days=2)


def _read(data: bytes, source: str) -> tuple[Calendar, dict[int, int], dict[int, str]]:
    """Returns the calendar, id(component) -> line, and VEVENT line -> raw DURATION."""
    text = decode(data, "utf-8", source)
    scanned = scan(text, source)
    if scanned.errors:
        raise FeedInvalid(scanned.errors)
    try:
        calendar = Calendar.from_ical(text)
    except ValueError as exc:
        raise FeedInvalid([FeedError(source, f"cannot parse the calendar: {exc}")]) from exc
    components = list(calendar.walk())
    names = [c.name for c in components]
    lines: dict[int, int] = {}
    if names == [name for name, _ in scanned.begins]:
        lines = {id(c): line for c, (_, line) in zip(components, scanned.begins, strict=True)}
    return calendar, lines, scanned.durations


def _cancelled(component: Component) -> bool:
    return str(component.get("STATUS", "")).upper() == "CANCELLED"


def _series(events: list[Component], lines: dict[int, int], where: dict[int, str],
            errors: list[FeedError]) -> list[list[Component]]:
    """A master and its RECURRENCE-ID overrides share a UID and must be expanded together;
    expanding series separately lets an expansion failure be pinned to its event.

    Some exporters reuse one UID for unrelated shifts. recurring-ical-events would then
    silently keep only one of them, so such events are expanded one by one, unless
    overrides make it ambiguous which event they modify."""
    by_uid: dict[str, list[Component]] = {}
    for event in events:
        uid = str(event.get("UID", "")) or f"no-uid-{id(event)}"
        by_uid.setdefault(uid, []).append(event)
    series: list[list[Component]] = []
    for uid, group in by_uid.items():
        masters = [e for e in group if "RECURRENCE-ID" not in e]
        if len(masters) <= 1:
            series.append(group)
        elif len(masters) == len(group):
            series.extend([e] for e in group)
        else:
            at = ", ".join(str(lines.get(id(e), "?")) for e in masters)
            errors.append(FeedError(where[id(masters[0])], f"UID '{uid}' is used by several "
                                    f"VEVENTs without RECURRENCE-ID (lines {at}), so its "
                                    "overrides cannot be matched"))
    return series


def _expand(series: list[Component], templates: dict[int, ShiftTemplate], where: dict[int, str],
            config: FeedConfig, window: tuple[datetime, datetime],
            errors: list[FeedError]) -> list[Shift]:
    calendar = Calendar()
    for event in series:
        calendar.add_component(event)
    first = where[id(series[0])]
    try:
        occurrences = list(recurring_ical_events.of(calendar).between(
            window[0] - QUERY_MARGIN, window[1] + QUERY_MARGIN))
    except ValueError as exc:
        errors.append(FeedError(first, f"cannot expand the recurrence: {exc}"))
        return []
    shifts: list[Shift] = []
    for occurrence in occurrences:
        tag = occurrence.get(TEMPLATE_TAG)
        if _cancelled(occurrence) or tag is None:
            continue
        template = templates[int(tag)]
        start = localize(occurrence["DTSTART"].dt, config.zone)
        if template.duration is not None:
            end = add_nominal_and_exact(start, *template.duration)
        else:
            end = to_utc(occurrence["DTEND"].dt, config.zone)
        if end <= start:  # e.g. a one-hour shift placed in the spring-forward gap
            ends = show(end.astimezone(start.tzinfo))
            errors.append(FeedError(template.where, f"the occurrence starting {show(start)} "
                                                    f"ends at {ends}, not after it"))
            continue
        shifts.extend(Shift(template.role, number, start.astimezone(UTC), end, template.where)
                      for number in template.staff_numbers)
    return shifts


def parse_ical(data: bytes, source: str, config: FeedConfig,
               window: tuple[datetime, datetime]) -> list[Shift]:
    """All shifts from an iCalendar feed whose occurrences fall near ``window`` (the caller
    trims to the window). Cancelled events and occurrences are not shifts and are skipped
    unchecked, since they often name people who have since left."""
    calendar, lines, durations = _read(data, source)
    where = {key: f"{source}:{line}" for key, line in lines.items()}
    errors: list[FeedError] = []
    for component in calendar.walk():
        for prop, message in component.errors:
            errors.append(FeedError(where.get(id(component), source),
                                    f"cannot read {prop or 'a line'}: {message}"))
    templates: dict[int, ShiftTemplate] = {}
    events = calendar.walk("VEVENT")
    for index, event in enumerate(events):
        here = where.setdefault(id(event), source)
        if _cancelled(event):
            continue  # kept in its series below: it removes that occurrence
        template, problems = check_event(event, here, durations.get(lines.get(id(event), 0)),
                                         config)
        errors.extend(FeedError(here, p) for p in problems)
        if template is not None:
            templates[index] = template
            event[TEMPLATE_TAG] = str(index)
    if errors:
        # Property errors come from icalendar, event checks from us; admins read by line.
        line_of = {where[key]: line for key, line in lines.items()}
        raise FeedInvalid(sorted(errors, key=lambda e: line_of.get(e.where, 0)))
    shifts: list[Shift] = []
    for series in _series(events, lines, where, errors):
        shifts.extend(_expand(series, templates, where, config, window, errors))
    if errors:
        raise FeedInvalid(errors)
    return shifts
