"""Audit records of admin API use, from Synapse's request log. Synapse offers modules no hook
for these requests, so a logging handler reads the request log line Synapse writes when a
request finishes (its fields: synapse_modules/adapter/access_log.py).

Only admin API use is recorded here. Downloads, thumbnails and uploads are recorded by the
code that sees them answered (synapse_modules/media_audit.py, the media gate), once each
with the answer the client got; logins by the login observer (synapse_modules/adapter/auth.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from carematrix.audit import actions as A
from carematrix.audit.access import ANONYMOUS
from carematrix.audit.record import AuditRecord
from synapse_modules.adapter.access_log import ACCESS_LOGGER, UnknownRequestLine, finished_request

log = logging.getLogger(__name__)

_ADMIN = re.compile(r"^/_synapse/admin/")


def classify(ip: str, requester: str | None, code: str, method: str, uri: str, process: str) -> AuditRecord | None:
    """The audit record for one finished request, or None if it is not one we record.
    ``requester`` is None for an anonymous request; an admin acting as another user is
    logged as "admin|user" and recorded as the admin."""
    path = uri.split("?", 1)[0]
    if not _ADMIN.match(path):
        return None
    actor = requester.split("|", 1)[0] if requester else ANONYMOUS
    outcome = A.SUCCESS if code.startswith(("2", "3")) else A.FAILURE
    if code in ("401", "403"):
        outcome = A.DENIED
    return AuditRecord(
        actor=actor, action=A.ADMIN_API, object=f"{method} {path[:200]}", outcome=outcome,
        source=ip, process=process, details={"status": code},
    )


class AccessLogAuditHandler(logging.Handler):
    def __init__(self, sink: Callable[[AuditRecord], None], process: str) -> None:
        super().__init__(level=logging.INFO)
        self._sink = sink
        self._process = process
        self._warned = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            request = finished_request(record)
            if request is None:
                return
            audit = classify(request.ip, request.requester, request.code, request.method, request.uri, self._process)
            if audit is not None:
                self._sink(audit)
        except UnknownRequestLine as exc:
            if not self._warned:
                self._warned = True
                log.warning(
                    "Synapse's request log line is not the one CareMatrix reads (%s): admin API "
                    "use is NOT being recorded in the audit trail", exc,
                )
        except Exception:  # a logging handler must never break request handling
            self.handleError(record)


def install(sink: Callable[[AuditRecord], None], process: str) -> AccessLogAuditHandler:
    handler = AccessLogAuditHandler(sink, process)
    logging.getLogger(ACCESS_LOGGER).addHandler(handler)
    return handler
