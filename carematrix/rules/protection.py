"""Content-protection rules over plain data: which state a protected room starts with, who may
change it, and which burn-after-read terms apply to a message."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from carematrix.commands import structured_command
from carematrix.policy.model import Policy
from carematrix.policy.rooms import BURN_FLAG, PROTECTION_EVENT, BurnPolicy, RoomClass
from carematrix.rules.verdict import ALLOW, Verdict

RETENTION_EVENT = "m.room.retention"
ENCRYPTION_EVENT = "m.room.encryption"
MEGOLM = "m.megolm.v1.aes-sha2"

NO_FORWARD = Verdict(
    False,
    "protection.no_forward",
    "根据医院规定，此房间的临床内容不能转发到其他地方。"
    " Forwarding clinical content out of this room is disabled by hospital policy.",
)


#: A transcript of a voice message (carematrix.voice.messages): the service posts it, but the
#: words are the sender's, so it is protected like the voice message it transcribes.
TRANSCRIPT_FIELD = "org.carematrix.transcript"

SERVICE_MESSAGE = Verdict(
    True,
    "protection.service_message",
    "Messages from the CareMatrix service are not clinical content to protect.",
)
SERVICE_COMMAND = Verdict(
    True,
    "protection.service_command",
    "Commands to the CareMatrix service are not clinical content to protect.",
)

# A command message carries its command and nothing else: no formatted copy, no reply or
# edit, no file. Anything more could hold clinical text behind a leading "!".
_COMMAND_KEYS = frozenset({"msgtype", "body", "m.mentions"})


def not_protected_content(event_type: str, content: Mapping[str, Any], is_system: bool) -> Verdict | None:
    """Traffic with the service itself is never protected content: a message the service
    sends (the bot, the on-duty role accounts), and a command to it typed in a ward room by
    mistake. Such a message is neither fingerprinted by no-forward nor refused as a forward,
    so ``!oncall cardiology`` works in a DM after it was sent in a ward room. Returns the
    verdict that exempts the message, or None for content that is protected as usual.

    Only a structured command qualifies (carematrix.commands): a command the bot knows, with
    identifier-like arguments, as a plain text message with nothing beside it. ``!decision``
    (free text), unknown ``!words`` and anything longer stay protected, so a leading "!" is
    never a way to carry clinical text out of a room.

    One message from the service is protected all the same: the transcript of a voice
    message, which holds what a member said (fingerprinted, and refused as a forward, like
    a text the member had typed)."""
    if is_system:
        return None if isinstance(content, Mapping) and TRANSCRIPT_FIELD in content else SERVICE_MESSAGE
    if event_type != "m.room.message" or not isinstance(content, Mapping):
        return None
    body = content.get("body")
    if content.get("msgtype") != "m.text" or not isinstance(body, str) or not set(content) <= _COMMAND_KEYS:
        return None
    return SERVICE_COMMAND if structured_command(body) is not None else None


def plain(value: Any) -> Any:
    """Synapse hands modules frozen mappings and tuples; compare them as JSON-like data."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [plain(v) for v in value]
    return value


def retention_content(rc: RoomClass) -> dict[str, int] | None:
    seconds = rc.protection.retention_seconds
    return {"max_lifetime": seconds * 1000} if seconds else None


def creation_state(rc: RoomClass) -> list[dict[str, Any]]:
    """State a new room of class ``rc`` starts with, beside its class event."""
    out: list[dict[str, Any]] = []
    if rc.protection.any:
        out.append({"type": PROTECTION_EVENT, "state_key": "", "content": rc.protection.state_content()})
    retention = retention_content(rc)
    if retention:
        out.append({"type": RETENTION_EVENT, "state_key": "", "content": retention})
    if rc.protection.encryption == "required":
        out.append({"type": ENCRYPTION_EVENT, "state_key": "", "content": {"algorithm": MEGOLM}})
    return out


# The protection settings a room cannot change, as staff read them in Chinese.
FIXED_WORDS_ZH = {"content protection": "内容保护", "message retention": "消息保留期限"}


def _fixed_by_policy(what: str) -> Verdict:
    return Verdict(
        False,
        "protection.state",
        f"此房间的{FIXED_WORDS_ZH.get(what, what)}由医院规定设定，不能在房间内更改。"
        f" This room's {what} is set by hospital policy and cannot be changed in the room.",
    )


def decide_protection_state(
    rc: RoomClass | None, event_type: str, content: Mapping[str, Any], is_system: bool
) -> Verdict:
    """Protection and retention state may only say what the class says; encryption may only be
    switched on where the class allows it. Users may send the policy's own values (createRoom
    sends its initial state as the creator)."""
    if is_system:
        return ALLOW
    if event_type == PROTECTION_EVENT:
        if rc is not None and plain(content) == plain(rc.protection.state_content()):
            return ALLOW
        return _fixed_by_policy("content protection")
    if event_type == RETENTION_EVENT:
        if rc is not None and plain(content) == retention_content(rc):
            return ALLOW
        return _fixed_by_policy("message retention")
    if event_type == ENCRYPTION_EVENT and rc is not None and rc.protection.encryption == "server":
        return Verdict(
            False,
            f"room_class.{rc.id}.encryption",
            f"此类房间（{rc.label}）不使用端到端加密：服务器负责保护其内容（水印、禁止转发、审计），"
            "必须能够读取内容。"
            f" End-to-end encryption is off in a {rc.label}: the server protects its content "
            "(watermarks, no-forward, audit) and must be able to read it.",
        )
    return ALLOW


def adjust_creation_request(rc: RoomClass, request: dict[str, Any]) -> None:
    """Fit a createRoom request to its class before Synapse acts on it: clients such as Element
    ask for encryption by default, which a server-protected class drops rather than failing the
    whole creation; a class whose history may not be 'shared' gets its first allowed value."""
    initial = [s for s in request.get("initial_state") or [] if isinstance(s, dict)]
    if rc.protection.encryption == "server":
        initial = [s for s in initial if s.get("type") != ENCRYPTION_EVENT]
    have = {s.get("type") for s in initial}
    if "m.room.history_visibility" not in have and "shared" not in rc.history_visibility:
        initial.append(
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": rc.history_visibility[0]},
            }
        )
    for state in creation_state(rc):
        if state["type"] not in have:
            initial.append(state)
    request["initial_state"] = initial


def burn_terms(policy: Policy, rc: RoomClass | None, content: Mapping[str, Any]) -> BurnPolicy | None:
    """The burn-after-read terms for a message, or None. A burn room burns every message; any
    message its sender flags burns too. The flag may shorten the terms, never extend them."""
    base = rc.protection.burn if rc is not None else None
    flag = content.get(BURN_FLAG) if isinstance(content, Mapping) else None
    if base is None and not flag:
        return None
    terms = base or policy.burn_defaults
    if isinstance(flag, Mapping):
        grace = _seconds(flag.get("grace_seconds"), terms.grace_seconds)
        ttl = _seconds(flag.get("ttl_seconds"), terms.ttl_seconds)
        terms = BurnPolicy(min(grace, terms.grace_seconds), min(max(ttl, 1), terms.ttl_seconds))
    return terms


def _seconds(value: Any, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return default


PAGE_FLAG = "org.carematrix.page"
PRIORITY_FIELD = "org.carematrix.priority"


def decide_priority(content: Mapping[str, Any], is_system: bool) -> Verdict:
    """Critical alerts and pages break through muted rooms and quiet hours, so only the
    CareMatrix service may mark a message that way."""
    if is_system or not isinstance(content, Mapping):
        return ALLOW
    if content.get(PAGE_FLAG) or content.get(PRIORITY_FIELD) == "critical":
        return Verdict(
            False,
            "priority.reserved",
            "只有 CareMatrix 服务可以发送危急警报和呼叫；要联系值班人员，请给值班角色发消息。"
            " Only the CareMatrix service sends critical alerts and pages; to reach someone on "
            "duty, message the on-duty role.",
        )
    return ALLOW
