"""Audit records from Synapse's request log: admin API use, media downloads and thumbnails
(logins are recorded by the login observer in internals.py). Synapse offers modules no
hook for these requests, so a logging handler reads the access-log line Synapse writes
when a request finishes.

The positions of the fields in that log call are a Synapse implementation detail; this is
one of the two places (with compat.py) that rely on one, guarded by
tests/unit/test_synapse_compat.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from urllib.parse import unquote

from carematrix.audit import actions as A
from carematrix.audit.record import AuditRecord

ACCESS_LOGGER = "synapse.access"
# Indexes into the access-log record's args (synapse/http/site.py, "Processed request").
ARG_IP, ARG_REQUESTER, ARG_CODE, ARG_METHOD, ARG_URI = 0, 2, 11, 12, 13
ARG_COUNT = 16

_MEDIA = re.compile(r"^/_matrix/(?:client/v1|media/v3|media/r0)/(?:media/)?(download|thumbnail)/([^/?]+)/([^/?]+)")
_UPLOAD = re.compile(r"^/_matrix/(?:media/v3|media/r0|client/v1/media)/upload")
_ADMIN = re.compile(r"^/_synapse/admin/")


def classify(ip: str, requester: str, code: str, method: str, uri: str, process: str) -> AuditRecord | None:
    """The audit record for one finished request, or None if it is not one we record."""
    actor = requester.split("|", 1)[0] if requester and requester != "-" else "anonymous"
    outcome = A.SUCCESS if code.startswith(("2", "3")) else A.FAILURE
    if code in ("401", "403"):
        outcome = A.DENIED
    path = uri.split("?", 1)[0]
    media = _MEDIA.match(path)
    if media and method == "GET":
        kind, server, media_id = media.groups()
        action = A.MEDIA_DOWNLOAD if kind == "download" else A.MEDIA_THUMBNAIL
        return AuditRecord(
            actor=actor, action=action, object=f"mxc://{unquote(server)}/{unquote(media_id)}",
            outcome=outcome, source=ip, process=process, details={"status": code},
        )
    if _UPLOAD.match(path) and method in ("POST", "PUT"):
        # The new mxc URI is not in the request log; the message that shares the file
        # records it (details.media), tying upload, room and sender together.
        return AuditRecord(
            actor=actor, action=A.MEDIA_UPLOAD, object=path[:200], outcome=outcome,
            source=ip, process=process, details={"status": code},
        )
    if _ADMIN.match(path):
        return AuditRecord(
            actor=actor, action=A.ADMIN_API, object=f"{method} {path[:200]}", outcome=outcome,
            source=ip, process=process, details={"status": code},
        )
    return None


class AccessLogAuditHandler(logging.Handler):
    def __init__(self, sink: Callable[[AuditRecord], None], process: str) -> None:
        super().__init__(level=logging.INFO)
        self._sink = sink
        self._process = process

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if not isinstance(args, tuple) or len(args) < ARG_COUNT:
            return
        try:
            audit = classify(
                str(args[ARG_IP]), str(args[ARG_REQUESTER]), str(args[ARG_CODE]),
                str(args[ARG_METHOD]), str(args[ARG_URI]), self._process,
            )
            if audit is not None:
                self._sink(audit)
        except Exception:  # a logging handler must never break request handling
            self.handleError(record)


def install(sink: Callable[[AuditRecord], None], process: str) -> AccessLogAuditHandler:
    handler = AccessLogAuditHandler(sink, process)
    logging.getLogger(ACCESS_LOGGER).addHandler(handler)
    return handler
