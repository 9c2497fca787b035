"""Single sign-on: refusing a person, and keeping the sign-in request's logging context.

An OpenID mapping provider refuses a person by raising Synapse's ``MappingException``:
Synapse shows its message on the error page. The class lives in ``synapse.handlers.sso``,
outside the module API.

Synapse 1.163 reads the IdP's userinfo answer (``OidcProvider._fetch_userinfo``, the path
of ``user_profile_method: userinfo_endpoint``, CareMatrix's default) by awaiting Twisted's
``readBody`` directly, against its own logging-context rules: the rest of the sign-in ran in
the sentinel context, and every SSO sign-in left ``Trying to stop RequestMetrics in the
sentinel context`` at ERROR and database warnings in the homeserver log, with the request's
metrics lost. The fetch is run as Synapse runs any call that does not follow the rules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from synapse.handlers import oidc
from synapse.handlers.sso import MappingException
from synapse.logging.context import make_deferred_yieldable, run_in_background

__all__ = ["MappingException", "keep_logging_context_in_userinfo_fetch"]

_MARK = "_carematrix_keeps_logging_context"


def keep_logging_context_in_userinfo_fetch() -> None:
    """Wrap ``OidcProvider._fetch_userinfo`` once per process (several providers share it)."""
    original: Callable[..., Awaitable[Any]] = oidc.OidcProvider._fetch_userinfo
    if getattr(original, _MARK, False):
        return

    async def fetch_userinfo(self: oidc.OidcProvider, token: Any) -> Any:
        # run_in_background gives the fetch the caller's context and hands control back to the
        # reactor in the sentinel one; make_deferred_yieldable restores ours when it is done.
        return await make_deferred_yieldable(run_in_background(original, self, token))

    setattr(fetch_userinfo, _MARK, True)
    fetch_userinfo.__wrapped__ = original  # type: ignore[attr-defined]
    oidc.OidcProvider._fetch_userinfo = fetch_userinfo  # type: ignore[method-assign]
