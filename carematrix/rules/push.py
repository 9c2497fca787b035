"""What a push notification may carry out of the homeserver.

A notification goes from Synapse to the hospital's push gateway and from there through
Google's or Apple's push service to a phone's lock screen. Synapse decides what it carries
by the **pusher's** ``format``, which the client chooses when it registers the pusher: an
``event_id_only`` pusher (Element's default) gets identifiers only, any other gets the
sender's display name and the room's name as well. Room names here name patients (case
and alert rooms are named after them, and staff name rooms freely — the server cannot tell
which), and display names are real names; so the homeserver itself keeps both out, whatever
format a pusher asked for. Message content never rides (``push.include_content: false``).

Kept: the identifiers a phone needs to fetch the event with its own token, what kind of
event it is, how urgent (``prio``, and the ``devices[].tweaks`` Synapse adds: sound,
highlight — the critical page's ``sound: critical``), the unread count and, for an
invitation, the membership. Anything else a Synapse release adds is left out until it is
known to be harmless: the list is of what may go, not of what may not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Top-level fields of a Push Gateway API notification the homeserver may send.
MAY_CARRY = frozenset({
    "id", "event_id", "room_id", "type", "sender", "prio", "counts", "membership", "user_is_target", "devices",
})


def gateway_notification(notification: Mapping[str, Any]) -> dict[str, Any]:
    """The notification as it may leave: room name, sender display name, content (and
    anything not known to be harmless) removed."""
    return {key: value for key, value in notification.items() if key in MAY_CARRY}
