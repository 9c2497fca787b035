"""How one hospital's scheduling export maps onto our roles and staff.

Every scheduling system labels roles, names people and lays out files its own way, so the
adapters stay generic and each feed gets one of these. Problems in the config itself are
raised as ``ValueError`` when it is built, so a typo is found at start-up rather than on the
first feed refresh.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

RoleSource = Literal["summary", "categories"]

FULL_LAYOUT = ("role", "staff_number", "start", "end")
DAY_LAYOUT = ("role", "staff_number", "date", "start_time", "end_time")
CSV_FIELDS = frozenset(FULL_LAYOUT + DAY_LAYOUT)
DEFAULT_COLUMNS: Mapping[str, str] = MappingProxyType({f: f for f in FULL_LAYOUT})


@dataclass(frozen=True, kw_only=True)
class FeedConfig:
    """Keyword-only because a dozen positional settings would be unreadable at call sites.

    ``roles`` and ``staff`` are looked up exactly first, then ignoring case, because exports
    are inconsistent about the case of e-mail addresses and labels. ``staff=None`` means the
    feed already carries our staff numbers. ``columns``, ``delimiter``, ``encoding``,
    ``date_formats`` and ``time_formats`` concern CSV only (iCalendar and FHIR JSON are UTF-8
    by their specs). ``staff_identifier_system`` restricts FHIR Practitioner identifiers to
    one system, since a Practitioner usually carries several (licence, national ID, ...).
    """

    timezone: str
    roles: Mapping[str, str]
    known_staff: frozenset[str]
    known_roles: frozenset[str]
    staff: Mapping[str, str] | None = None
    role_from: RoleSource = "summary"
    columns: Mapping[str, str] = field(default_factory=lambda: DEFAULT_COLUMNS)
    delimiter: str = ","
    encoding: str = "utf-8"
    date_formats: tuple[str, ...] = ("%Y-%m-%d", "%Y/%m/%d")
    time_formats: tuple[str, ...] = ("%H:%M", "%H:%M:%S")
    staff_identifier_system: str | None = None
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone") from exc
        object.__setattr__(self, "_zone", zone)
        if self.role_from not in ("summary", "categories"):
            raise ValueError(f"role_from must be 'summary' or 'categories', not {self.role_from!r}")
        unknown = sorted(set(self.columns) - CSV_FIELDS)
        if unknown:
            raise ValueError(f"columns names unknown field(s) {', '.join(unknown)}")
        if not (set(FULL_LAYOUT) <= set(self.columns) or set(DAY_LAYOUT) <= set(self.columns)):
            raise ValueError(
                "columns must map either role, staff_number, start, end "
                "or role, staff_number, date, start_time, end_time"
            )
        if len(self.delimiter) != 1:
            raise ValueError(f"delimiter must be one character, not {self.delimiter!r}")
        try:
            codecs.lookup(self.encoding)
        except LookupError as exc:
            raise ValueError(f"encoding {self.encoding!r} is unknown") from exc
        if not self.date_formats or not self.time_formats:
            raise ValueError("date_formats and time_formats must not be empty")
        # Frozen should mean frozen: callers' dicts could otherwise change under a running feed.
        object.__setattr__(self, "roles", MappingProxyType(dict(self.roles)))
        object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))
        if self.staff is not None:
            object.__setattr__(self, "staff", MappingProxyType(dict(self.staff)))

    @property
    def zone(self) -> ZoneInfo:
        """Resolved once so a bad name fails when the config is built, not per time value."""
        return self._zone

    @property
    def day_layout(self) -> bool:
        """Whether the CSV has one date column plus start/end time columns."""
        return set(DAY_LAYOUT) <= set(self.columns)
