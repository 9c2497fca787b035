"""Which events delivered by the homeserver the appservice acts on, read from the event as
sent (JSON), before the appservice has answered the transaction that carried it.

The homeserver never sends a transaction again once it is answered, and the appservice
library answers before it runs the event handlers; so the events a handler acts on — a page
to an on-duty role, an acknowledgement, a command, the invite that brings a role account into
a conversation — are written down first (appservice/inbox.py). Everything else (chat in the
ward rooms the service sits in, joins by org sync) is not, so the database holds only what a
crash must not lose. This module decides as much as the event alone tells:

- an **invite** of the service's bot or of a role account, by a local user (the role joins and
  the conversation's pages can reach it);
- a **command** (``!ack``, ``!oncall``, ``!call``, ``!case`` … — anything the bot answers)
  from a person;
- a **message** from a person: acted on when it pages a role of its room (see
  :func:`addresses_role`) or replies to a page — which needs the service's records;
- a **reaction** from a person: acted on when it is put on a page — the same records.

The service's own accounts (the bot, the role accounts) are never acted on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from carematrix import identity
from carematrix.commands import parse_command

INVITE, COMMAND, MESSAGE, REACTION = "invite", "command", "message", "reaction"


@dataclass(frozen=True)
class Interest:
    """A delivered event a handler may act on. ``target``: the event it replies or reacts to."""

    kind: str
    event_id: str
    room_id: str
    sender: str
    target: str | None = None
    content: Mapping[str, Any] = field(default_factory=dict)

    @property
    def certain(self) -> bool:
        """Acted on whatever the service's records say (an invite, a command)."""
        return self.kind in (INVITE, COMMAND)


def interest(raw: Any, bot: str, server: str) -> Interest | None:
    """What a handler may act on in one delivered event, or None for an event none does."""
    if not isinstance(raw, Mapping):
        return None
    event_id, room_id, sender, kind = (raw.get(k) for k in ("event_id", "room_id", "sender", "type"))
    content = raw.get("content")
    if not (isinstance(event_id, str) and isinstance(room_id, str) and isinstance(sender, str)
            and isinstance(content, Mapping)):
        return None
    if identity.server_name(sender) != server or identity.is_system_account(sender, bot, server):
        return None
    if kind == "m.room.member":
        member = raw.get("state_key")
        if content.get("membership") == "invite" and isinstance(member, str) and (
            member == bot or identity.is_role_account(member, server)
        ):
            return Interest(INVITE, event_id, room_id, sender, content=content)
        return None
    if "state_key" in raw:
        return None
    if kind == "m.reaction":
        target = _relates_to(content)
        return Interest(REACTION, event_id, room_id, sender, target, content) if target else None
    if kind != "m.room.message":
        return None
    body = content.get("body")
    if isinstance(body, str) and parse_command(body) is not None:
        return Interest(COMMAND, event_id, room_id, sender, content=content)
    return Interest(MESSAGE, event_id, room_id, sender, reply_target(content), content)


def addresses_role(content: Mapping[str, Any], direct: bool, role_user: str, role_name: str) -> bool:
    """Whether a message pages a role present in its room: every message in a direct chat
    with the role does; in a group room one that mentions it (``m.mentions``, its Matrix ID
    or its name in the text). A command to the service (``!ack 3F9A1C`` sent where the page
    is, ``!oncall``) pages nobody: the service answers it."""
    body = content.get("body")
    if isinstance(body, str) and parse_command(body) is not None:
        return False
    if direct:
        return True
    mentions = content.get("m.mentions")
    users = mentions.get("user_ids") if isinstance(mentions, Mapping) else None
    if isinstance(users, list) and role_user in users:
        return True
    body = str(content.get("body", ""))
    return role_user in body or role_name in body


def reply_target(content: Mapping[str, Any]) -> str | None:
    """The event a message replies to (``m.relates_to.m.in_reply_to``), if any."""
    relates = content.get("m.relates_to")
    if not isinstance(relates, Mapping):
        return None
    reply = relates.get("m.in_reply_to")
    target = reply.get("event_id") if isinstance(reply, Mapping) else None
    return str(target) if target else None


def _relates_to(content: Mapping[str, Any]) -> str | None:
    relates = content.get("m.relates_to")
    target = relates.get("event_id") if isinstance(relates, Mapping) else None
    return str(target) if target else None
