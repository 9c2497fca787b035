"""Which audit record a Matrix event makes: metadata only, never the message body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from carematrix.audit import actions as A
from carematrix.audit.record import AuditRecord

_MEMBERSHIP_ACTIONS = {
    "invite": A.ROOM_MEMBER_INVITE,
    "join": A.ROOM_MEMBER_JOIN,
    "ban": A.ROOM_MEMBER_BAN,
    "knock": A.ROOM_MEMBER_JOIN,
}


def record_for_event(
    *,
    event_type: str,
    sender: str,
    room_id: str,
    event_id: str,
    state_key: str | None,
    content: Mapping[str, Any],
    process: str,
) -> AuditRecord:
    details: dict[str, Any] = {"event_id": event_id, "type": event_type}
    obj = event_id
    if event_type == "m.room.create":
        action, obj = A.ROOM_CREATE, room_id
    elif event_type == "m.room.member":
        membership = content.get("membership")
        obj = state_key or ""
        if membership == "leave":
            action = A.ROOM_MEMBER_LEAVE if state_key == sender else A.ROOM_MEMBER_KICK
        else:
            action = _MEMBERSHIP_ACTIONS.get(str(membership), A.ROOM_STATE)
        details["membership"] = str(membership)
    elif state_key is not None:
        action = A.ROOM_STATE
        details["state_key"] = state_key[:200]
    elif event_type == "m.room.redaction":
        action = A.MESSAGE_REDACT
        redacts = content.get("redacts")
        if isinstance(redacts, str):
            details["redacts"] = redacts
    else:
        relates = content.get("m.relates_to")
        is_edit = isinstance(relates, Mapping) and relates.get("rel_type") == "m.replace"
        action = A.MESSAGE_EDIT if is_edit else A.MESSAGE_SEND
        msgtype = content.get("msgtype")
        if isinstance(msgtype, str):
            details["msgtype"] = msgtype[:64]
        media = content.get("url")
        if isinstance(media, str) and media.startswith("mxc://"):
            details["media"] = media[:255]  # ties a file to the room it was shared in
        replaces = relates.get("event_id") if is_edit and isinstance(relates, Mapping) else None
        if isinstance(replaces, str):
            details["replaces"] = replaces
    return AuditRecord(actor=sender, action=action, object=obj, room=room_id, process=process, details=details)
