"""Resuming callers that wait on a Deferred, in their own logging context.

Synapse attributes database time and metrics to the logging context a coroutine runs in;
one that waits (``make_deferred_yieldable``) expects to resume in its own. Whoever fires
the Deferred must do so outside its own context, or the waiter would run on in the firer's.
"""

from __future__ import annotations

from collections.abc import Iterable

from synapse.logging.context import PreserveLoggingContext
from twisted.internet import defer


def resume(waiting: Iterable[defer.Deferred], error: BaseException | None = None) -> None:
    """Fire every Deferred in ``waiting`` not fired yet, with None or ``error``. The caller
    keeps its own logging context; each waiter resumes in its own."""
    with PreserveLoggingContext():
        for done in waiting:
            if not done.called:
                if error is None:
                    done.callback(None)
                else:
                    done.errback(error)
