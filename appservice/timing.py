"""Where the time goes between a critical result being stored and the first person paged.

A critical result must reach a human within half a second even when its ward has to be
looked up or an alert room made for it. To see which step costs what, delivery of an urgent
item runs inside ``tracking(...)``; the steps below it (store reads, homeserver calls,
requests to the EMR, pages) mark themselves with ``step(...)`` and ``point(...)``, and the
whole is logged as one line when the item is done. Outside ``tracking`` every call is a
no-op, so routine traffic pays nothing. The context follows tasks started inside it, so
steps run side by side show up side by side (each with its start offset).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from types import SimpleNamespace
from typing import Any

import aiohttp

log = logging.getLogger("carematrix.appservice.timing")


class Steps:
    """The spans of one delivery: (name, start offset, duration) in ms from ``start``."""

    def __init__(self, label: str, start: float) -> None:
        self.label = label
        self.start = start
        self.spans: list[tuple[str, float, float | None]] = []

    def text(self) -> str:
        """"first-human 312 | queued 40 @0 | createRoom 250 @45 | …" (duration @ start offset)."""
        parts = []
        for name, at, took in self.spans:
            parts.append(f"{name} @{at:.0f}" if took is None else f"{name} {took:.0f} @{at:.0f}")
        return " | ".join(parts)

    def now(self) -> float:
        return (time.perf_counter() - self.start) * 1000

    def between(self, name: str, began: float, ended: float) -> None:
        """A span measured before tracking started (perf_counter times)."""
        self.spans.append((name, (began - self.start) * 1000, (ended - began) * 1000))


_current: ContextVar[Steps | None] = ContextVar("carematrix_alert_steps", default=None)


@contextmanager
def tracking(label: str, since: float | None) -> Iterator[Steps]:
    """Time everything below (and tasks started below) as the delivery of ``label``;
    ``since`` (perf_counter) is when it arrived, so the wait in the queue counts too. The
    caller logs it with ``report`` when the delivery is over (it may end in such a task)."""
    steps = Steps(label, since if since is not None else time.perf_counter())
    token = _current.set(steps)
    try:
        yield steps
    finally:
        _current.reset(token)


def report(steps: Steps) -> None:
    log.info("alert steps %s: total %.0f ms | %s", steps.label, steps.now(), steps.text())


@contextmanager
def step(name: str) -> Iterator[None]:
    steps = _current.get()
    if steps is None:
        yield
        return
    at = steps.now()
    try:
        yield
    finally:
        steps.spans.append((name, at, steps.now() - at))


def point(name: str) -> None:
    """An instant worth seeing in the breakdown (e.g. the first page notice is sent)."""
    steps = _current.get()
    if steps is not None:
        steps.spans.append((name, steps.now(), None))


def call_step(method: str, path: str) -> AbstractContextManager[None]:
    """A homeserver call as a step, named after its method and path ("PUT rooms/send")."""
    return step(f"{method} {_short(path)}")


def http_trace() -> aiohttp.TraceConfig:
    """Trace hooks for an HTTP session (the one for the hospital's FHIR server): every
    request made while an alert is tracked becomes a step named after its method and path."""
    config = aiohttp.TraceConfig()

    async def started(session: Any, ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams) -> None:
        steps = _current.get()
        ctx.steps = steps
        if steps is not None:
            ctx.at = steps.now()

    async def ended(session: Any, ctx: SimpleNamespace, params: Any) -> None:
        steps = getattr(ctx, "steps", None)
        if steps is not None:
            steps.spans.append((f"{params.method} {_short(params.url.path)}", ctx.at, steps.now() - ctx.at))

    config.on_request_start.append(started)
    config.on_request_end.append(ended)
    config.on_request_exception.append(ended)
    return config


def _short(path: str) -> str:
    """"/_matrix/client/v3/rooms/!x/send/m.room.message/txn" -> "rooms/send"."""
    words = [w for w in path.split("/") if w and not w.startswith(("_", "v1", "v2", "v3", "!", "@", "#", "%"))]
    keep = [w for w in words if w in {"createRoom", "rooms", "send", "invite", "join", "directory", "room",
                                      "state", "records", "event", "users", "profile", "register"}]
    return "/".join(keep) or path[-40:]
