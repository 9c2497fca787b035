"""Automatic garbage collection paused while a thread builds a large structure.

Building a 5,000-staff policy, or org sync's plan for it, makes some 100,000 objects that
stay alive until the build is done. With automatic collection on, Python meanwhile
traverses the whole heap again and again, holding the interpreter lock each time — up to a
second in all — and the event loop, though not building anything, stalls on the lock. The
objects are freed by reference counting anyway, so collection can wait until the build is
done. Processes that collect on their own schedule (Synapse turns automatic collection off)
are left as they are.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()
_pausers = 0
_paused_by_us = False


@contextmanager
def automatic_gc_paused() -> Iterator[None]:
    """Nestable and safe across threads: collection resumes when the last one leaves."""
    global _pausers, _paused_by_us
    with _lock:
        if _pausers == 0:
            _paused_by_us = gc.isenabled()
            gc.disable()
        _pausers += 1
    try:
        yield
    finally:
        with _lock:
            _pausers -= 1
            if _pausers == 0 and _paused_by_us:
                gc.enable()


def without_automatic_gc(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` with automatic collection paused (for ``asyncio.to_thread``)."""
    with automatic_gc_paused():
        return fn(*args, **kwargs)
