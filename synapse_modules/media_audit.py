"""Audit records of file requests, made from the answer the client got.

Two owners, one record per request (docs/audit.md, "In the running system"):
- downloads and thumbnails: the media gate (synapse_modules/protection.py), which sees
  every one of them first; a protected file's success is on record before its bytes are sent;
- uploads: ``record_uploads`` here (the audit module installs it), after the answer, with
  the new ``mxc://`` URI, size and content type.
The request log (synapse_modules/access_log.py) records admin API use only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from carematrix.audit.access import Requester, upload_record
from synapse_modules.adapter.auth import stamped_requester
from synapse_modules.adapter.media import StoredUpload, install_upload_observer
from synapse_modules.audit_writer import AuditWriter

log = logging.getLogger(__name__)


def when_answered(request: Any, done: Callable[[int, bool], None]) -> None:
    """Call ``done(status, complete)`` once ``request`` has its answer: ``complete`` is False
    when the connection closed before the whole answer was sent. Must be called before the
    request finishes (a finished request notifies nobody)."""

    def finished(result: Any) -> None:
        try:
            done(int(request.code), result is None and bool(request.finished))
        except Exception:
            log.exception("audit record of %s could not be made", request.path[:200])

    request.notifyFinish().addBoth(finished)


def client_address(request: Any) -> str:
    return str(request.getClientAddress().host)


def requester_after(request: Any) -> tuple[Requester | None, str | None]:
    """Who Synapse found had sent a request it answered: (user, None), (None, another
    server's name), or (None, None) for a request without a valid access token."""
    found = stamped_requester(request)
    if isinstance(found, str):
        return None, found
    return found, None


def record_uploads(writer: AuditWriter) -> None:
    """Record every upload request once it is answered (``media.upload``)."""

    async def observe(request: Any, stored: StoredUpload) -> None:
        source = client_address(request)

        def answered(status: int, complete: bool) -> None:
            requester, _ = requester_after(request)
            writer.record_soon(
                upload_record(
                    requester=requester, source=source, process=writer.process, status=status,
                    complete=complete, mxc=stored.mxc, size=stored.size, content_type=stored.content_type,
                    reason=stored.error,
                )
            )

        when_answered(request, answered)

    install_upload_observer(observe)
