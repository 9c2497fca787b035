"""Signed-in console sessions: the browser holds only a random value (in an HttpOnly,
SameSite=Strict cookie), the server keeps the session in the homeserver database under the
SHA-256 of that value (``carematrix.hsdb.console_session_store``), and every change the
browser asks for must carry the session's CSRF token. A session ends when signed out, after
``idle`` without use, or after ``lifetime`` whatever the use (a ward PC left signed in is not
signed in for ever).

Pure: what a new session is, when one has expired and when its idle clock is worth writing
back; the console module reads and writes the rows."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from carematrix.hsdb.console_session_store import StoredSession

DEFAULT_IDLE = timedelta(minutes=30)
DEFAULT_LIFETIME = timedelta(hours=12)
# A page view restarts the idle clock in the database only when the stored time is older
# than this: one write a minute at most per session, not one per page (the idle limit is
# 30 minutes, so a minute's staleness does not matter).
TOUCH_AFTER = timedelta(minutes=1)
KEEP_PER_USER = 20  # a person's oldest sessions past this many end at their next sign-in


@dataclass(frozen=True)
class Session:
    token_hash: str
    user_id: str
    csrf: str
    started: datetime
    last_used: datetime
    expires: datetime
    is_admin: bool = False


def token_hash(cookie_value: str) -> str:
    """What the database keys a session by: the cookie is 256 random bits, so a plain
    SHA-256 cannot be turned back into it."""
    return hashlib.sha256(cookie_value.encode()).hexdigest()


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def new_session(
    user_id: str, now: datetime, is_admin: bool = False, lifetime: timedelta = DEFAULT_LIFETIME
) -> tuple[str, Session]:
    """(the cookie value for the browser, the session to store)."""
    cookie = secrets.token_urlsafe(32)
    session = Session(token_hash(cookie), user_id, secrets.token_urlsafe(32), now, now, now + lifetime, is_admin)
    return cookie, session


def to_row(session: Session) -> StoredSession:
    return StoredSession(
        session.token_hash, session.user_id, session.csrf, session.is_admin,
        _ms(session.started), _ms(session.last_used), _ms(session.expires),
    )


def from_row(row: StoredSession) -> Session:
    return Session(
        row.token_hash, row.user_id, row.csrf, _at(row.started_at), _at(row.last_used_at), _at(row.expires_at),
        row.is_admin,
    )


def expired(session: Session, now: datetime, idle: timedelta = DEFAULT_IDLE) -> bool:
    return now >= session.expires or now - session.last_used > idle


def needs_touch(session: Session, now: datetime) -> bool:
    return now - session.last_used >= TOUCH_AFTER


def csrf_ok(session: Session, given: str | None) -> bool:
    """Does the form's token match the session's (compared in constant time)?"""
    return bool(given) and hmac.compare_digest(session.csrf.encode(), (given or "").encode())
