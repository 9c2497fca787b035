"""Push notifications leave without names or words, whatever the pusher's format.

Synapse builds a notification from the event and the pusher's ``format``
(``HttpPusher.dispatch_push_event``: a pusher without ``event_id_only`` gets the sender's
display name and the room's name) and hands the result to ``HttpPusher.dispatch_push``,
which adds the device (and its tweaks) and posts it to the gateway. Modules get no hook
there, and the format is the client's choice at registration. ``dispatch_push`` is wrapped:
the notification passes carematrix.rules.push first.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from synapse_modules.adapter.wrapping import wrap_once

HTTP_PUSHER = ("synapse.push.httppusher", "HttpPusher")
NotificationFilter = Callable[[Mapping[str, Any]], dict[str, Any]]
_filter: NotificationFilter | None = None


def install_push_filter(keep: NotificationFilter) -> None:
    global _filter
    _filter = keep
    wrap_once(HTTP_PUSHER, "dispatch_push", _filtered)


def _filtered(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def dispatch_push(self: Any, content: Any, *a: Any, **kw: Any) -> Any:
        if _filter is not None and isinstance(content, Mapping):
            content = _filter(content)
        return await original(self, content, *a, **kw)

    return dispatch_push
