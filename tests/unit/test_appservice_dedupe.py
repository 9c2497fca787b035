"""Deliveries from the homeserver are de-duplicated by event, because transaction IDs repeat
after a homeserver restart on SQLite."""

from __future__ import annotations

from appservice.dedupe import NoTransactionIds, RecentEvents


def test_a_transaction_id_seen_before_is_still_read():
    ids = NoTransactionIds()
    ids.add("6")
    assert "6" not in ids


def test_an_event_delivered_twice_is_handled_once_and_memory_is_bounded():
    recent = RecentEvents(size=3)
    assert recent.first_time("$a") and not recent.first_time("$a")
    for e in ("$b", "$c", "$d"):
        assert recent.first_time(e)
    assert recent.first_time("$a")  # forgotten after 3 newer ones
    assert recent.first_time(None) and recent.first_time(None)  # receipts carry no event ID
