"""A deeper accept queue on Synapse's listening sockets.

Synapse opens its listeners with a backlog of 50 connections waiting to be accepted
(``synapse.app._base.listen_unix`` and ``listen_tcp``). In the worker deployment every
request reaches a process through nginx, which opens a connection per request in flight
beyond its kept-alive ones. While a process's reactor is busy, a burst of requests queues
more than 50 connections: a UNIX socket refuses the next one at once (``EAGAIN``) and
nginx answers the client 502 — under 200 concurrent senders, 62 of 1,000 sends in one run
were lost that way (docs/scale.md). A TCP socket drops the connection attempt instead and
the connect is retried a second later: slower, not lost. A deeper queue (capped by the
kernel's ``net.core.somaxconn``) holds such a burst until the process accepts it.

Modules are loaded before the listeners are built, so the policy module's constructor
wraps the two functions in time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from synapse_modules.adapter.wrapping import wrap_function_once

# Connections one listening socket holds until its process accepts them. Linux caps it at
# net.core.somaxconn (4096 since kernel 5.4; 128 before, raise it there).
LISTEN_BACKLOG = 1024
LISTENING_MODULE = "synapse.app._base"
LISTEN_FUNCTIONS = ("listen_unix", "listen_tcp")
# Both take the backlog as their fifth argument, and Synapse's listen_http passes none.
BACKLOG_POSITION = 4


def _with_backlog(original: Callable[..., Any]) -> Callable[..., Any]:
    def listen(*args: Any, **kwargs: Any) -> Any:
        if len(args) <= BACKLOG_POSITION and "backlog" not in kwargs:
            kwargs["backlog"] = LISTEN_BACKLOG
        return original(*args, **kwargs)

    return listen


def deepen_listen_backlog() -> None:
    """Every listener this process opens from now on holds ``LISTEN_BACKLOG`` connections."""
    for name in LISTEN_FUNCTIONS:
        wrap_function_once(LISTENING_MODULE, name, _with_backlog)
