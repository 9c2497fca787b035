"""One audit record per file request, saying what the client got.

A download, a thumbnail and an upload each end in exactly one answer to the client; the
record of the request is made from that answer, not from what the server meant to do. So
an auditor who searches by person sees the 415 a person got, not a success, and a request
without a valid access token is ``anonymous`` with its address, never an empty actor.

Pure: the Synapse side (synapse_modules/media_audit.py, the media gate in
synapse_modules/protection.py) collects the facts of a request and calls these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from carematrix.audit import actions as A
from carematrix.audit.record import MAX_DETAIL_VALUE_CHARS, AuditRecord

ANONYMOUS = "anonymous"
# The object of an upload refused before a file was stored (no mxc:// URI exists).
NO_FILE = "upload"
# Why an answer that was not a success was given, when nothing more precise is known.
STATUS_REASONS = {
    400: "bad request",
    401: "no valid access token",
    403: "forbidden",
    404: "not found",
    409: "media ID already in use",
    413: "file too large",
    415: "cannot be processed",
    429: "rate limited",
    500: "server error",
    502: "remote server error",
    503: "unavailable",
    504: "remote server timed out",
}
CONNECTION_LOST = "the connection closed before the whole answer was sent"
HEADERS_ONLY = "HEAD request: headers only, no content sent"


def outcome_of(status: int, complete: bool) -> str:
    """``success`` only for a 2xx answer sent whole; ``denied`` for 401/403; else ``failure``."""
    if 200 <= status < 300 and complete:
        return A.SUCCESS
    if status in (401, 403):
        return A.DENIED
    return A.FAILURE


def reason_of(status: int, complete: bool, reason: str | None) -> str | None:
    """The reason a record states for an answer that was not a success (None for a success)."""
    if outcome_of(status, complete) == A.SUCCESS:
        return None
    if 200 <= status < 300:
        return reason or CONNECTION_LOST
    text = reason or STATUS_REASONS.get(status) or f"HTTP {status}"
    return text[:MAX_DETAIL_VALUE_CHARS]


@dataclass
class Requester:
    """Who sent a request: ``user`` is the account it acts as, ``by`` the account at the
    keyboard when that is another (a server admin acting as a user). The record names the
    person at the keyboard and keeps the other in ``details.as_user``."""

    user: str
    by: str | None = None

    @property
    def actor(self) -> str:
        return self.by or self.user


@dataclass
class MediaRequest:
    """The facts of one download or thumbnail request, filled in as it is answered.

    ``requester`` None is a request without a valid access token (recorded as
    ``anonymous`` from ``source``); ``server`` is set for a request from another server.
    ``rule`` names the policy rule that decided it (allowed or refused); ``reason`` why it
    was not a success; ``details`` what else the gate knows (how it was served)."""

    kind: str  # "download" or "thumbnail"
    mxc: str
    source: str
    process: str
    requester: Requester | None = None
    server: str | None = None
    room: str | None = None
    rule: str | None = None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def action(self) -> str:
        return A.MEDIA_THUMBNAIL if self.kind == "thumbnail" else A.MEDIA_DOWNLOAD

    def record(self, status: int, complete: bool) -> AuditRecord:
        """The record of this request answered with ``status`` (``complete``: the whole
        answer was sent)."""
        return AuditRecord(
            actor=actor_of(self.requester, self.server), action=self.action, object=self.mxc,
            room=self.room, outcome=outcome_of(status, complete), source=self.source,
            process=self.process, rule=self.rule,
            details=_details(self.requester, status, reason_of(status, complete, self.reason), self.details),
        )


def actor_of(requester: Requester | None, server: str | None = None) -> str:
    """A user ID, another server's name, or ``anonymous`` (the address is the record's source)."""
    if requester is not None:
        return requester.actor
    return server or ANONYMOUS


def upload_record(
    *,
    requester: Requester | None,
    source: str,
    process: str,
    status: int,
    complete: bool,
    mxc: str | None,
    size: int | None,
    content_type: str | None,
    reason: str | None = None,
) -> AuditRecord:
    """The record of one upload: its ``mxc://`` URI, size and content type once stored (an
    upload refused before anything was stored has no URI: its object is ``upload``)."""
    extra: dict[str, Any] = {}
    if size is not None:
        extra["size"] = size
    if content_type is not None:
        extra["content_type"] = content_type[:200]
    return AuditRecord(
        actor=actor_of(requester), action=A.MEDIA_UPLOAD, object=mxc or NO_FILE,
        outcome=outcome_of(status, complete), source=source, process=process,
        details=_details(requester, status, reason_of(status, complete, reason), extra),
    )


def _details(requester: Requester | None, status: int, reason: str | None, extra: dict[str, Any]) -> dict[str, Any]:
    details: dict[str, Any] = {"status": status, **extra}
    if reason is not None:
        details["reason"] = reason
    if requester is not None and requester.by and requester.by != requester.user:
        details["as_user"] = requester.user
    return details
