"""Roster feed adapters: scheduling-system exports in, validated shifts out.

A feed is accepted or rejected as a whole. A half-read roster would page the wrong person,
so any problem raises ``FeedInvalid`` listing every problem found (each with the file and
line, or resource, an admin has to fix) and the previous roster stays in force.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from bridges.roster.config import FeedConfig
from bridges.roster.csv_feed import parse_csv
from bridges.roster.fhir import parse_fhir
from bridges.roster.ical import parse_ical
from bridges.roster.window import check_window, select
from carematrix.oncall.model import FeedError, FeedInvalid, Shift

__all__ = ["FEED_KINDS", "FeedConfig", "FeedError", "FeedInvalid", "parse_feed"]

Window = tuple[datetime, datetime]
_PARSERS: dict[str, Callable[[bytes, str, FeedConfig, Window], list[Shift]]] = {
    "ical": parse_ical,
    "csv": lambda data, source, config, _window: parse_csv(data, source, config),
    "fhir": lambda data, source, config, _window: parse_fhir(data, source, config),
}
FEED_KINDS = frozenset(_PARSERS)


def parse_feed(kind: str, data: bytes, source: str, config: FeedConfig,
               window: tuple[datetime, datetime]) -> list[Shift]:
    """The shifts overlapping ``window`` (aware datetimes), sorted by start, role and staff
    number, each once, with times in UTC. The whole feed is validated, including shifts
    outside the window, so a broken feed is noticed before its bad rows come due.

    ``kind`` and ``window`` come from our own configuration, not the feed, so mistakes in
    them raise ``ValueError`` rather than ``FeedInvalid``.
    """
    parser = _PARSERS.get(kind)
    if parser is None:
        expected = ", ".join(sorted(_PARSERS))
        raise ValueError(f"unknown feed kind {kind!r}; expected one of {expected}")
    check_window(window)
    return select(parser(data, source, config, window), window)
