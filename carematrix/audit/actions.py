"""The audit vocabulary: every action a record may name, in one place.

Callers use these constants rather than string literals so a typo fails at import time, and
the FHIR and syslog mappings can be checked against the complete list. Two namespaces are
open (``appservice.*`` and ``bridge.*``): the appservice and the hospital-system bridges
name their own events there without a change to this file.
"""

from __future__ import annotations

import re

AUTH_LOGIN = "auth.login"
AUTH_LOGIN_FAILED = "auth.login_failed"
AUTH_LOGOUT = "auth.logout"

ROOM_CREATE = "room.create"
ROOM_MEMBER_INVITE = "room.member.invite"
ROOM_MEMBER_JOIN = "room.member.join"
ROOM_MEMBER_LEAVE = "room.member.leave"
ROOM_MEMBER_KICK = "room.member.kick"
ROOM_MEMBER_BAN = "room.member.ban"
ROOM_STATE = "room.state"

MESSAGE_SEND = "message.send"
MESSAGE_EDIT = "message.edit"
MESSAGE_REDACT = "message.redact"
# A burn-after-read message purged (content, search row, edits and files deleted).
MESSAGE_BURN = "message.burn"

MEDIA_UPLOAD = "media.upload"
MEDIA_DOWNLOAD = "media.download"
MEDIA_THUMBNAIL = "media.thumbnail"

POLICY_DENIED = "policy.denied"
POLICY_RELOAD = "policy.reload"
POLICY_RELOAD_REJECTED = "policy.reload_rejected"

ORG_SYNC = "org.sync"
ADMIN_API = "admin.api"
AUDIT_QUERY = "audit.query"

ACTIONS: frozenset[str] = frozenset(
    {
        AUTH_LOGIN,
        AUTH_LOGIN_FAILED,
        AUTH_LOGOUT,
        ROOM_CREATE,
        ROOM_MEMBER_INVITE,
        ROOM_MEMBER_JOIN,
        ROOM_MEMBER_LEAVE,
        ROOM_MEMBER_KICK,
        ROOM_MEMBER_BAN,
        ROOM_STATE,
        MESSAGE_SEND,
        MESSAGE_EDIT,
        MESSAGE_REDACT,
        MESSAGE_BURN,
        MEDIA_UPLOAD,
        MEDIA_DOWNLOAD,
        MEDIA_THUMBNAIL,
        POLICY_DENIED,
        POLICY_RELOAD,
        POLICY_RELOAD_REJECTED,
        ORG_SYNC,
        ADMIN_API,
        AUDIT_QUERY,
    }
)

# Namespaces whose actions are named by the component that owns them.
OPEN_PREFIXES: tuple[str, ...] = ("appservice.", "bridge.", "console.")

# Lower-case dotted words; at most 32 characters because the action is the syslog MSGID
# (RFC 5424 limits MSGID to 32 printable ASCII characters).
ACTION_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
MAX_ACTION_LENGTH = 32

SUCCESS = "success"
FAILURE = "failure"
DENIED = "denied"
OUTCOMES: frozenset[str] = frozenset({SUCCESS, FAILURE, DENIED})


def action_problem(action: str) -> str | None:
    """Why ``action`` is not in the vocabulary, or None if it is."""
    if not isinstance(action, str) or not ACTION_RE.match(action):
        return f"action {action!r} must be lower-case dotted words like 'auth.login'"
    if len(action) > MAX_ACTION_LENGTH:
        return f"action {action!r} is longer than {MAX_ACTION_LENGTH} characters"
    if action in ACTIONS or action.startswith(OPEN_PREFIXES):
        return None
    return (
        f"action {action!r} is not in the audit vocabulary (carematrix.audit.actions); "
        f"components may name their own under {' or '.join(p + '*' for p in OPEN_PREFIXES)}"
    )
