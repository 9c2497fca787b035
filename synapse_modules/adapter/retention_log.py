"""Synapse's log line for a retention purge that finds nothing old enough.

Rooms whose class keeps messages for a limited time (policies/rooms.yaml, ``retention``)
carry a retention policy, and Synapse's purge jobs visit each of them on a schedule. For a
room with no message older than its lifetime yet — every room of a new hospital, and any
quiet one — Synapse 1.163 logs ``[purge] purging events not possible: No event found`` at
WARNING in ``PaginationHandler.purge_history_for_rooms_in_range``, several on every start.
Nothing is wrong then: there is nothing to purge. A WARNING must be a problem someone acts
on, so this filter (attached to Synapse's logger in ``log.yaml``) logs that line at INFO;
every other purge message stays as Synapse logs it.
"""

from __future__ import annotations

import logging

LOGGER = "synapse.handlers.pagination"
# The message Synapse logs, as written in purge_history_for_rooms_in_range (a guard test
# reads it there).
NOTHING_TO_PURGE = "[purge] purging events not possible: No event found (ts %i => stream_ordering %i)"


class NothingToPurge(logging.Filter):
    """Logs "no event old enough to purge" at INFO instead of WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == NOTHING_TO_PURGE and record.levelno == logging.WARNING:
            record.levelno = logging.INFO
            record.levelname = logging.getLevelName(logging.INFO)
        return True
