"""A readable reason on a refused join or invite.

Synapse's ``user_may_join_room`` / ``user_may_invite`` spam-checker callbacks can only
return an error code plus extra response fields; the client would see a generic "Not allowed
to join this room". Synapse builds the error body by adding the extra fields after "error",
so an ``error`` field replaces the message with our reason.
"""

from __future__ import annotations

from synapse.module_api.errors import Codes

from carematrix.rules import Verdict


def refusal_with_reason(verdict: Verdict) -> tuple[Codes, dict[str, str]]:
    return Codes.FORBIDDEN, {"error": verdict.message(), "org.carematrix.rule": verdict.rule}
