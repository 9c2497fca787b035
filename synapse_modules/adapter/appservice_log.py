"""Synapse's log line for an application service's answer to a room-address query.

The service claims the hospital's room addresses (``#.+``, not exclusively: it creates the
standard rooms), so Synapse asks it about every address it does not have, and
``ApplicationServiceApi.query_alias`` logs the service's "404, not one of mine" at WARNING.
That answer is the normal one: org sync looks up each standard room's address before making
the room (eighteen on a new hospital's first start), and a mistyped address is the typist's
slip, already answered 404 to them. A WARNING must be a problem someone acts on, so this
filter (attached to Synapse's logger in ``log.yaml``) logs that one answer at INFO; any other
status, or a service that cannot be reached, stays a WARNING.
"""

from __future__ import annotations

import logging

LOGGER = "synapse.appservice.api"
# The message Synapse logs, as written in query_alias (a guard test reads it there).
QUERY_ALIAS_ANSWER = "query_alias to %s received %s"


class AliasNotOurs(logging.Filter):
    """Logs the service's 404 to an alias query at INFO instead of WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg == QUERY_ALIAS_ANSWER and record.levelno == logging.WARNING and args[-1:] == (404,):
            record.levelno = logging.INFO
            record.levelname = logging.getLevelName(logging.INFO)
        return True
