"""Signing in to the console through the hospital's single sign-on, the way a Matrix client
does it (docs/console.md): the homeserver's login flows say whether SSO (and passwords) are
offered, the browser goes to Synapse's SSO redirect with the console's callback as
``redirectUrl``, and Synapse sends it back there with a login token.

Login CSRF: someone could otherwise start a sign-in as themselves and send a colleague's
browser to the callback with their own token, signing the colleague in to the console as
them. So the callback carries a random ``state`` that must equal the one the same browser
was given, in a cookie, when it clicked the button.

Pure: what the flows offer, the URLs, and the state check; the console module does the HTTP."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

CALLBACK = "login/sso/callback"  # below the console's base path
STATE_LIFETIME_SECONDS = 600  # time to get through the IdP's own sign-in page


@dataclass(frozen=True)
class IdentityProvider:
    id: str | None  # None: the homeserver names none (one SSO, e.g. CAS): its plain redirect
    name: str


@dataclass(frozen=True)
class SignInOptions:
    password: bool
    sso: tuple[IdentityProvider, ...]


def sign_in_options(answer: Any) -> SignInOptions:
    """What the sign-in page offers, from ``GET /_matrix/client/v3/login``: the password form
    when ``m.login.password`` is a flow, a button per identity provider of ``m.login.sso``."""
    flows = answer.get("flows") if isinstance(answer, dict) else None
    password, providers = False, []
    for flow in flows if isinstance(flows, list) else []:
        kind = flow.get("type") if isinstance(flow, dict) else None
        if kind == "m.login.password":
            password = True
        elif kind == "m.login.sso":
            listed = flow.get("identity_providers")
            found = [IdentityProvider(str(p["id"]), str(p.get("name") or p["id"]))
                     for p in (listed if isinstance(listed, list) else [])
                     if isinstance(p, dict) and isinstance(p.get("id"), str) and p["id"]]
            providers.extend(found or [IdentityProvider(None, "")])
    return SignInOptions(password, tuple(providers))


def new_state() -> str:
    return secrets.token_urlsafe(32)


def state_ok(expected: str | None, given: str | None) -> bool:
    """Does the callback's state equal the one this browser was given (constant time)?"""
    return bool(expected) and bool(given) and hmac.compare_digest((expected or "").encode(), (given or "").encode())


def callback_url(public_baseurl: str, console_base: str, state: str) -> str:
    """Where Synapse sends the browser back: the console on the homeserver's public URL (the
    one on ``sso.client_whitelist``), carrying the state."""
    return f"{public_baseurl.rstrip('/')}{console_base}/{CALLBACK}?{urlencode({'state': state})}"


def redirect_url(public_baseurl: str, idp_id: str | None, callback: str) -> str:
    """Synapse's SSO redirect for one identity provider (or its only one)."""
    path = "/_matrix/client/v3/login/sso/redirect" + (f"/{quote(idp_id, safe='')}" if idp_id else "")
    return f"{public_baseurl.rstrip('/')}{path}?{urlencode({'redirectUrl': callback})}"
