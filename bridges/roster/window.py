"""The last step shared by every adapter: keep what matters for the window, once, in order."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from carematrix.oncall.model import Shift


def check_window(window: tuple[datetime, datetime]) -> None:
    """A naive window would compare wrongly (or raise) against aware shift times, so it is
    refused as a caller bug rather than reported as a feed problem."""
    start, end = window
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("the window must be timezone-aware")
    if end <= start:
        raise ValueError("the window must end after it starts")


def select(shifts: Iterable[Shift], window: tuple[datetime, datetime]) -> list[Shift]:
    """A shift that overlaps the window is kept whole, because the person is on duty for all
    of it. The same shift listed twice (duplicate rows, an event exported twice) is kept once,
    with the first place it was seen as its source; sources differ, so plain equality would
    not catch such duplicates."""
    start, end = window
    kept: dict[tuple[str, str, datetime, datetime], Shift] = {}
    for shift in shifts:
        if shift.start < end and shift.end > start:
            kept.setdefault((shift.role, shift.staff_number, shift.start, shift.end), shift)
    return sorted(kept.values(), key=lambda s: (s.start, s.role, s.staff_number))
