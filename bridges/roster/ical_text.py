"""Line-level reading of iCalendar text: structure checks and where each component begins.

Admins fix feeds by line number, but icalendar neither remembers lines nor explains broken
structure well, so this scanner runs first. It also keeps each VEVENT's raw DURATION,
because icalendar turns ``P1D`` and ``PT24H`` into the same timedelta although RFC 5545
gives them different lengths across a DST change.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from carematrix.oncall.model import FeedError

_VALUE = r'(?:"[^"]*"|[^";:,]*)'
CONTENT_LINE = re.compile(rf"([A-Za-z0-9-]+)(?:;[A-Za-z0-9-]+={_VALUE}(?:,{_VALUE})*)*:")
DURATION = re.compile(r"([+-])?P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?")


@dataclass
class Scan:
    """``begins`` lists (component name, line) in document order, which is also the order
    of ``Calendar.walk()``, so the two can be zipped to give every component its line."""

    begins: list[tuple[str, int]] = field(default_factory=list)
    durations: dict[int, str] = field(default_factory=dict)  # VEVENT line -> raw DURATION
    errors: list[FeedError] = field(default_factory=list)


def _clip(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Unfold continuation lines, numbering each content line by its first physical line.
    Blank lines are skipped: RFC 5545 forbids them, but exporters add them and they carry
    nothing."""
    parts: list[str]
    start, parts = 0, []
    for number, line in enumerate(re.split(r"\r\n|\n|\r", text), 1):
        if line[:1] in (" ", "\t") and parts:
            parts.append(line[1:])
            continue
        if parts:
            yield start, "".join(parts)
        start, parts = number, ([line] if line.strip() else [])
    if parts:
        yield start, "".join(parts)


def scan(text: str, source: str) -> Scan:
    result = Scan()

    def error(line: int, message: str) -> None:
        result.errors.append(FeedError(f"{source}:{line}", message))

    lines = list(logical_lines(text))
    if not lines or lines[0][1].strip().upper() != "BEGIN:VCALENDAR":
        # Typically an HTML login or error page: one clear complaint beats one per line.
        first = _clip(lines[0][1]) if lines else "nothing"
        result.errors.append(
            FeedError(source, f"not an iCalendar file: it starts with '{first}'"))
        return result
    stack: list[tuple[str, int]] = []
    calendars = 0
    for number, content in lines:
        match = CONTENT_LINE.match(content)
        if match is None:
            error(number, f"not an iCalendar content line: '{_clip(content)}'")
            continue
        name, value = match.group(1).upper(), content[match.end():].strip()
        if name == "BEGIN":
            component = value.upper()
            if not stack:
                calendars += 1
                if component != "VCALENDAR":
                    error(number, f"BEGIN:{component} outside the VCALENDAR")
                elif calendars > 1:
                    error(number, "a second VCALENDAR; a feed must hold exactly one")
            stack.append((component, number))
            result.begins.append((component, number))
        elif name == "END":
            component = value.upper()
            open_names = [n for n, _ in stack]
            if component not in open_names:
                error(number, f"END:{component} without a matching BEGIN")
                continue
            while stack[-1][0] != component:
                unclosed, line = stack.pop()
                error(line, f"BEGIN:{unclosed} is never closed (END:{component} at line {number})")
            stack.pop()
        elif not stack:
            error(number, f"{name} outside the VCALENDAR")
        elif stack[-1][0] == "VEVENT" and name == "DURATION":
            result.durations[stack[-1][1]] = value
    for unclosed, line in stack:
        error(line, f"BEGIN:{unclosed} is never closed")
    return result


def nominal_and_exact(duration: str) -> tuple[int, int] | None:
    """Split an RFC 5545 duration into (days, seconds): weeks and days are nominal (wall
    clock), hours, minutes and seconds exact. None when the text is not a duration."""
    match = DURATION.fullmatch(duration.strip())
    if match is None or not any(match.groups()[1:]):
        return None
    sign = -1 if match.group(1) == "-" else 1
    weeks, days, hours, minutes, seconds = (int(g or 0) for g in match.groups()[1:])
    return sign * (weeks * 7 + days), sign * (hours * 3600 + minutes * 60 + seconds)
