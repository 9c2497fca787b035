"""Who sent a request: the requester of a media download, and every /login attempt."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from synapse.module_api import ModuleApi

from carematrix.audit.access import Requester
from synapse_modules.adapter.homeserver import homeserver
from synapse_modules.adapter.wrapping import wrap_once

log = logging.getLogger(__name__)


async def requester_of(api: ModuleApi, request: Any, required: bool) -> Requester | None:
    """Who sent a media request: the user it acts as and, for an admin acting as a user, the
    admin. None when ``required`` is False and the request carries no access token (legacy
    endpoints are unauthenticated); an invalid token raises Synapse's 401."""
    auth = homeserver(api).get_auth()
    if not required and not auth.has_access_token(request):
        return None
    # By token rather than get_user_by_req: that one stamps the request with its requester,
    # and Synapse's own servlet (serving an audited file after us) stamps it again.
    token = auth.get_access_token_from_request(request)
    # An application service's token is no user's access token (get_user_by_access_token
    # answers M_UNKNOWN_TOKEN): resolve it the way get_user_by_req does first, as the
    # service's sender or the namespaced user it names with ?user_id=. The case archive
    # downloads the room's files this way.
    requester = await auth.get_appservice_user(request, token)
    if requester is None:
        requester = await auth.get_user_by_access_token(token)
    return _who(requester)


async def requester_user_id(api: ModuleApi, request: Any, required: bool) -> str | None:
    """The user a media request acts as (see ``requester_of``)."""
    who = await requester_of(api, request, required)
    return who.user if who is not None else None


def stamped_requester(request: Any) -> Requester | str | None:
    """Who Synapse's own servlet found had sent ``request``, once it has run: a user (with the
    admin acting as them), another server's name (federation), or None (no valid token)."""
    found = getattr(request, "requester", None)
    if found is None or isinstance(found, str):
        return found
    return _who(found)


def _who(requester: Any) -> Requester:
    user = requester.user.to_string()
    by = requester.authenticated_entity
    return Requester(user, by if by and by != user else None)


LOGIN_SERVLET = ("synapse.rest.client.login", "LoginRestServlet")
LoginObserver = Callable[[Any, dict, "dict | None", "BaseException | None"], Awaitable[None]]
_login_observer: LoginObserver | None = None


def install_login_observer(observer: LoginObserver) -> None:
    """Let ``observer`` see every /login: the submitted identifier (never the password), the
    result or the error. Synapse tells modules about successful logins only, without the
    device or the address; the audit trail needs failed attempts by user too."""
    global _login_observer
    _login_observer = observer
    wrap_once(LOGIN_SERVLET, "on_POST", _observing_logins)


def _observing_logins(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def on_post(self: Any, request: Any, *a: Any, **kw: Any) -> Any:
        try:
            result = await original(self, request, *a, **kw)
        except BaseException as exc:
            if _login_observer is not None:
                await _safe_observe(request, None, exc)
            raise
        if _login_observer is not None:
            body = result[1] if isinstance(result, tuple) and len(result) > 1 else None
            await _safe_observe(request, body if isinstance(body, dict) else None, None)
        return result

    return on_post


async def _safe_observe(request: Any, result: dict | None, error: BaseException | None) -> None:
    try:
        assert _login_observer is not None
        await _login_observer(request, login_submission(request), result, error)
    except Exception:
        log.exception("login observer failed")


def login_submission(request: Any) -> dict:
    """The /login body Synapse has read, without secrets (password, token)."""
    try:
        request.content.seek(0)
        body = json.loads(request.content.read() or b"{}")
    except (ValueError, OSError, AttributeError):
        return {}
    if not isinstance(body, dict):
        return {}
    return {k: v for k, v in body.items() if k not in ("password", "token")}
