"""The request log line Synapse writes when a request finishes.

Synapse offers modules no hook for finished requests; its access logger's record carries
the request's fields as positional arguments of one log call (``synapse/http/site.py``,
"Processed request"), and which argument is which is an implementation detail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

# Each listener logs to a child of this logger (``synapse.access.http.<port>``).
ACCESS_LOGGER = "synapse.access"
# Indexes into the record's args.
ARG_IP, ARG_REQUESTER, ARG_CODE, ARG_METHOD, ARG_URI = 0, 2, 11, 12, 13
ARG_COUNT = 17
PROCESSED = "Processed request"


@dataclass(frozen=True)
class FinishedRequest:
    ip: str
    requester: str | None  # "@user:server", or "@admin:server|@puppet:server"; None: anonymous
    code: str  # "200"; "200!" when the client went away before the whole answer was sent
    method: str
    uri: str  # with access tokens and other secrets redacted


class UnknownRequestLine(ValueError):
    """A "Processed request" record whose arguments are not the ones this module knows:
    Synapse changed its request log line."""


def finished_request(record: logging.LogRecord) -> FinishedRequest | None:
    """The request a record of the access logger reports, or None for any other record.
    Raises UnknownRequestLine if Synapse changed the line (its fields could be misread)."""
    if PROCESSED not in str(record.msg):
        return None
    args = record.args
    if not isinstance(args, tuple) or len(args) != ARG_COUNT:
        raise UnknownRequestLine(f"{len(args) if isinstance(args, tuple) else 'no'} arguments, expected {ARG_COUNT}")
    requester = args[ARG_REQUESTER]
    return FinishedRequest(
        ip=str(args[ARG_IP]),
        requester=None if requester in (None, "", "-") else str(requester),
        code=str(args[ARG_CODE]),
        method=str(args[ARG_METHOD]),
        uri=str(args[ARG_URI]),
    )
