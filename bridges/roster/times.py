"""Turning feed times into the instants a Shift holds.

Shifts leave the adapters in UTC: Python subtracts two datetimes that share a ZoneInfo by
wall clock, so a 20:00-08:00 night across spring-forward would claim 12 h instead of 11 h.
UTC makes durations, comparisons and de-duplication exact; display code converts back.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo


def localize(value: datetime, zone: tzinfo) -> datetime:
    """Floating (naive) times mean the feed's local zone. Non-existent times in a
    spring-forward gap resolve with the offset before the gap (fold=0), which is what
    RFC 5545 prescribes, and ambiguous fall-back times take their first occurrence."""
    return value.replace(tzinfo=zone) if value.tzinfo is None else value


def to_utc(value: datetime, zone: tzinfo) -> datetime:
    return localize(value, zone).astimezone(UTC)


def add_nominal_and_exact(start: datetime, days: int, seconds: int) -> datetime:
    """RFC 5545 durations count days on the wall clock but hours, minutes and seconds in
    real time, so ``P1D`` still ends at the same local time across a DST change while
    ``PT12H`` is twelve real hours. ``start`` must be aware."""
    return (start + timedelta(days=days)).astimezone(UTC) + timedelta(seconds=seconds)


def show(value: datetime) -> str:
    """Errors show times as the feed wrote them, with the offset that was applied."""
    return value.isoformat(sep=" ", timespec="minutes")
