"""How the adapter runs our event checks before Synapse's own: a check that breaks refuses the
event (fail closed, logged as an error), while Synapse calling off the work that made the event
(a cancellation) is passed on as such — not logged as a broken check."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from twisted.internet.defer import CancelledError

from synapse_modules.adapter import events


class Event:
    event_id = "$member"


async def synapse_says_yes(self: Any, event: Any, context: Any) -> tuple[bool, None]:
    return True, None


def wrapped(check: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(events, "_event_check_order", [("carematrix_real_names", check)])
    return events._checking_events_first(synapse_says_yes)


async def test_a_broken_check_refuses_the_event_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    async def broken(event: Any) -> bool:
        raise ValueError("profile store unreadable")

    with caplog.at_level(logging.ERROR):
        assert await wrapped(broken, monkeypatch)(None, Event(), None) == (False, None)
    assert any("carematrix_real_names failed on $member" in r.getMessage() for r in caplog.records)


async def test_a_cancelled_event_is_passed_on_without_an_error(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    async def cancelled(event: Any) -> bool:
        raise CancelledError()

    with caplog.at_level(logging.ERROR), pytest.raises(CancelledError):
        await wrapped(cancelled, monkeypatch)(None, Event(), None)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_passing_check_leaves_the_decision_to_synapse(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fine(event: Any) -> bool:
        return True

    assert await wrapped(fine, monkeypatch)(None, Event(), None) == (True, None)
