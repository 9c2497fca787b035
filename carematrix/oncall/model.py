"""Plain data shared by the roster feeds (bridges/roster), the on-call logic and the
appservice: a shift, a manual override, and what goes wrong with a feed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Shift:
    """``staff_number`` holds ``role`` from ``start`` (inclusive) to ``end`` (exclusive).

    Times are timezone-aware; overnight shifts simply end the next day. ``source`` says where
    the shift came from (``roster.ics:42``, ``https://…/roster.csv:7``) for errors and audit.
    """

    role: str  # a role address ID from the policy, e.g. "cardiology/attending"
    staff_number: str
    start: datetime
    end: datetime
    source: str = ""


@dataclass(frozen=True)
class Override:
    """A manual change on top of the roster (``!oncall swap`` / ``!oncall cover``): from
    ``start`` to ``end`` ``staff_number`` holds ``role`` instead of ``replaces`` (None: in
    addition to whoever is rostered)."""

    role: str
    staff_number: str
    start: datetime
    end: datetime
    replaces: str | None
    by: str  # staff number of who made the change
    kind: str = "cover"  # "cover" or "swap"


@dataclass(frozen=True)
class FeedError:
    where: str  # file:line, URL:line or URL
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class FeedInvalid(Exception):
    """A feed failed validation as a whole: the previous roster stays in force."""

    errors: list[FeedError] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)
