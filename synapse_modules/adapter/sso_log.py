"""Synapse's log line for a refused single sign-on.

A person the hospital's sign-in vouches for but the staff list does not name (a leaver, an
outsider, a claim IT has not released) is refused by our mapping provider raising
``MappingException``: they see its message on Synapse's error page. Synapse 1.163 logs every
such refusal with ``logger.exception("Could not map user")`` in ``OidcProvider.
handle_oidc_callback``: ERROR and a traceback, in the log where an ERROR means the server is
at fault. A refusal is the staff list doing its job, and the operator needs the reason, not
the stack: this filter (attached to Synapse's logger in ``log.yaml``) logs it as a WARNING
naming the reason the person was shown. Any other exception there stays as Synapse logs it.
"""

from __future__ import annotations

import logging

LOGGER = "synapse.handlers.oidc"
# The message Synapse logs, as written in handle_oidc_callback (a guard test reads it there).
COULD_NOT_MAP = "Could not map user"


class RefusalNotAFault(logging.Filter):
    """Logs a refused sign-in (a ``MappingException``) as a WARNING with its reason and no
    traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.msg == COULD_NOT_MAP and exc is not None and type(exc).__name__ == "MappingException":
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
            record.msg = "SSO sign-in refused: %s"
            record.args = (str(exc),)
            record.exc_info = None
            record.exc_text = None
        return True
