"""Duplicate deliveries from the homeserver, recognised by event, not by transaction ID.

mautrix drops a transaction whose ID it has seen before. Synapse on SQLite numbers its
appservice transactions from the highest one still stored, and deletes them once delivered:
after a homeserver restart the numbers start again low, and mautrix silently dropped every
event (pages, commands, acknowledgements) until the numbers passed the old ones. So every
transaction is read, and an event already handled is skipped by its event ID: here for the
life of the process; across a restart, for the events the service acts on, by the event
inbox (appservice.inbox), which keeps their IDs in the database once they are handled.
"""

from __future__ import annotations

from collections import OrderedDict


class NoTransactionIds(set):
    """Stands in for mautrix's set of handled transaction IDs: remembers none."""

    def __contains__(self, item: object) -> bool:
        return False

    def add(self, item: object) -> None:
        return None


class RecentEvents:
    """The IDs of the last ``size`` events handled; a resent transaction repeats no work."""

    def __init__(self, size: int = 20000) -> None:
        self.size = size
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first_time(self, event_id: str | None) -> bool:
        if not event_id:  # ephemeral events (receipts) carry none; handling them twice is harmless
            return True
        if event_id in self._seen:
            return False
        self._seen[event_id] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True
