"""The appservice's notion of "now". Tests (and drills) move it with an offset so a page at
07:59 and one at 08:01 can be sent in the same minute of real time; production uses the
system clock and the endpoint that moves it is not mounted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class Clock:
    def __init__(self) -> None:
        self._offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def set(self, at: datetime) -> None:
        self._offset = at - datetime.now(UTC)

    def advance(self, seconds: float) -> None:
        self._offset += timedelta(seconds=seconds)
