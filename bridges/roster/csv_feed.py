"""CSV roster exports: a header row, then one shift per row, columns named by the config.

Rows either carry full start/end date-times, or a date plus start and end times; in the
second layout an end time at or before the start time means the shift ends the next day
(20:00-08:00 is a night shift, 08:00-08:00 a 24-hour duty), and ``24:00`` is accepted as an
end time. Naive times are in ``config.timezone``; ISO 8601 values with an offset keep it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol

from bridges.roster.config import DAY_LAYOUT, FULL_LAYOUT, FeedConfig
from bridges.roster.mapping import Unmapped, role_for, staff_for
from bridges.roster.text import decode
from bridges.roster.times import localize, show
from carematrix.oncall.model import FeedError, FeedInvalid, Shift

EXAMPLE = datetime(2025, 3, 31, 20, 0)
END_OF_DAY = ("24:00", "24:00:00")


class _Reader(Protocol):
    """What we use of ``csv.reader``'s result, whose class is private."""

    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...

    def __next__(self) -> list[str]: ...


def _parse_datetime(value: str, config: FeedConfig) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        pass
    for date_format in config.date_formats:
        for time_format in config.time_formats:
            try:
                return datetime.strptime(value, f"{date_format} {time_format}")
            except ValueError:
                continue
    return None


def _parse_date(value: str, config: FeedConfig) -> date | None:
    for date_format in config.date_formats:
        try:
            return datetime.strptime(value, date_format).date()
        except ValueError:
            continue
    return None


def _parse_time(value: str, config: FeedConfig) -> time | None:
    for time_format in config.time_formats:
        try:
            return datetime.strptime(value, time_format).time()
        except ValueError:
            continue
    return None


class _Row:
    """Problems are collected per row rather than raised, so a row with a bad role *and* a
    bad time reports both in one refresh."""

    def __init__(self, cells: dict[str, str], config: FeedConfig) -> None:
        self.cells = cells
        self.config = config
        self.problems: list[str] = []

    def _bad(self, field: str, what: str, example: str) -> None:
        column = self.config.columns[field]
        self.problems.append(f"{column} '{self.cells[field]}' is not a {what} like {example}")

    def times(self) -> tuple[datetime, datetime] | None:
        """(start, end) as aware local times, or None after recording why not."""
        config = self.config
        if not config.day_layout:
            start = _parse_datetime(self.cells["start"], config)
            end = _parse_datetime(self.cells["end"], config)
            like = EXAMPLE.strftime(f"{config.date_formats[0]} {config.time_formats[0]}")
            if start is None:
                self._bad("start", "date and time", like)
            if end is None:
                self._bad("end", "date and time", like)
            if start is None or end is None:
                return None
            return localize(start, config.zone), localize(end, config.zone)
        day = _parse_date(self.cells["date"], config)
        begins = _parse_time(self.cells["start_time"], config)
        end_text = self.cells["end_time"]
        ends = time(0) if end_text in END_OF_DAY else _parse_time(end_text, config)
        if day is None:
            self._bad("date", "date", EXAMPLE.strftime(config.date_formats[0]))
        for field, value in (("start_time", begins), ("end_time", ends)):
            if value is None:
                self._bad(field, "time", EXAMPLE.strftime(config.time_formats[0]))
        if day is None or begins is None or ends is None:
            return None
        end_day = day + timedelta(days=1) if ends <= begins or end_text in END_OF_DAY else day
        start = localize(datetime.combine(day, begins), config.zone)
        return start, localize(datetime.combine(end_day, ends), config.zone)

    def shift(self, where: str) -> Shift | None:
        role = staff = None
        try:
            role = role_for([self.cells["role"]], self.config)
        except Unmapped as exc:
            self.problems.append(str(exc))
        try:
            staff = staff_for([self.cells["staff_number"]], self.config)
        except Unmapped as exc:
            self.problems.append(str(exc))
        span = self.times()
        if span is None:
            return None
        # Compared in UTC: aware datetimes sharing a zone compare by wall clock.
        start, end = (t.astimezone(UTC) for t in span)
        if end <= start:
            self.problems.append(f"end {show(span[1])} is not after start {show(span[0])}")
            return None
        if role is None or staff is None:
            return None
        return Shift(role, staff, start, end, where)


def _header(reader: _Reader, source: str, config: FeedConfig) -> tuple[dict[str, int], int]:
    """Column index per field, and the header's width; raises when a needed column is
    missing, since no row could then be read."""
    row = next((r for r in reader if any(cell.strip() for cell in r)), None)
    if row is None:
        raise FeedInvalid([FeedError(f"{source}:1", "the file is empty; a header row is required")])
    header = [cell.strip().lstrip("\ufeff") for cell in row]
    where = f"{source}:{reader.line_num}"
    fields = DAY_LAYOUT if config.day_layout else FULL_LAYOUT
    missing = [config.columns[f] for f in fields if config.columns[f] not in header]
    if missing:
        listed = ", ".join(f"'{m}'" for m in missing)
        raise FeedInvalid([FeedError(where, f"missing column(s) {listed}; the header has: "
                                            f"{', '.join(header)}")])
    twice = [config.columns[f] for f in fields if header.count(config.columns[f]) > 1]
    if twice:
        raise FeedInvalid([FeedError(where, f"column '{twice[0]}' appears twice in the header")])
    return {f: header.index(config.columns[f]) for f in fields}, len(header)


def parse_csv(data: bytes, source: str, config: FeedConfig) -> list[Shift]:
    """Every row is checked and every problem reported with its line; line numbers count
    physical lines, so a quoted cell spanning lines does not shift later rows' numbers."""
    text = decode(data, config.encoding, source)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=config.delimiter)
    errors: list[FeedError] = []
    shifts: list[Shift] = []
    try:
        columns, width = _header(reader, source, config)
        previous = reader.line_num
        for row in reader:
            where, previous = f"{source}:{previous + 1}", reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != width:
                errors.append(FeedError(where, f"row has {len(row)} cells but the header has "
                                               f"{width}"))
                continue
            cells = {field: row[index].strip() for field, index in columns.items()}
            parsed = _Row(cells, config)
            empty = [field for field, value in cells.items() if not value]
            if empty:
                errors.extend(FeedError(where, f"column '{config.columns[f]}' is empty")
                              for f in empty)
                continue
            shift = parsed.shift(where)
            errors.extend(FeedError(where, p) for p in parsed.problems)
            if shift is not None:
                shifts.append(shift)
    except csv.Error as exc:
        # The reader cannot resync after a broken quote or NUL byte; stop at that line.
        errors.append(FeedError(f"{source}:{reader.line_num}", f"unreadable CSV: {exc}"))
    if errors:
        raise FeedInvalid(errors)
    return shifts
