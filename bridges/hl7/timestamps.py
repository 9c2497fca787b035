"""HL7 DTM/DT values (``YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]``) to and from datetimes.

An offset, when sent, is kept: ward displays convert to the hospital's zone themselves. A
value without one stays naive rather than being pinned to our server's zone, because the
sender's local time is the only honest reading of it and the caller knows which zone that is.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

from bridges.hl7.errors import DATA_TYPE_ERROR, Hl7Error

_DTM = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?"
    r"(?:([+-])(\d{2})(\d{2}))?"
)


def parse_dtm(value: str, location: str) -> datetime | None:
    """Missing precision reads as the start of the period (``20250301`` is midnight)."""
    value = value.strip()
    if not value:
        return None
    match = _DTM.fullmatch(value)
    if match is None:
        raise Hl7Error(DATA_TYPE_ERROR, f"{value!r} is not an HL7 date/time", location)
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    zone = None
    if sign:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        zone = timezone(-offset if sign == "-" else offset)
    try:
        return datetime(
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
            int(second or 0), int((fraction or "0").ljust(6, "0")), tzinfo=zone,
        )
    except ValueError as exc:
        raise Hl7Error(DATA_TYPE_ERROR, f"{value!r} is not a valid date/time", location) from exc


def parse_date(value: str, location: str) -> date | None:
    """None for year- or month-precision values (a birth year is all some patients have):
    making up a day would show a wrong birthday on the wristband label."""
    moment = parse_dtm(value, location)
    if moment is None or len(value.strip()) < 8:
        return None
    return moment.date()


def format_dtm(moment: datetime) -> str:
    """Second precision, with the offset when the datetime is aware."""
    text = moment.strftime("%Y%m%d%H%M%S")
    offset = moment.utcoffset()
    if offset is None:
        return text
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{text}{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
