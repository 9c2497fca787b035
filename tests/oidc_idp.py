"""A stand-in for the hospital's identity provider (OAuth2 authorization code + userinfo).

Tests pick who signs in next (``sign_in_next``); ``/authorize`` then sends the browser
straight back with a code, as a real IdP would after its own login page. Only what Synapse
uses with ``user_profile_method: userinfo_endpoint`` and no ``openid`` scope is served: no
ID tokens, no keys.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

from aiohttp import web

from carematrix_ops.demo.threaded import serve_in_thread

CLIENT_ID = "carematrix-test"
CLIENT_SECRET = "test-client-secret-4711"


@dataclass
class HospitalIdp:
    port: int
    stop: Callable[[], None]
    _next: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    codes: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What /token saw, for assertions about how Synapse authenticated.
    token_requests: list[dict[str, str]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sign_in_next(self, sub: str, claims: dict[str, Any]) -> None:
        """The person the next /authorize signs in, as if they had typed their password."""
        self._next.append((sub, claims))

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """The ``Settings.oidc`` pointing Synapse at this IdP."""
        return {
            "issuer": self.base + "/",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "authorization_endpoint": self.base + "/authorize",
            "token_endpoint": self.base + "/token",
            "userinfo_endpoint": self.base + "/userinfo",
            "scopes": ["profile"],
            "skip_verification": True,
            **overrides,
        }


def _build_app(idp: HospitalIdp) -> web.Application:
    async def authorize(request: web.Request) -> web.StreamResponse:
        q = request.query
        if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code":
            return web.Response(status=400, text="bad client_id or response_type")
        if not idp._next:
            return web.Response(status=403, text="no test user selected (sign_in_next)")
        code = secrets.token_urlsafe(16)
        sub, claims = idp._next.pop(0)
        idp.codes[code] = (q["redirect_uri"], {**claims, "sub": sub})
        raise web.HTTPFound(q["redirect_uri"] + "?" + urlencode({"code": code, "state": q.get("state", "")}))

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        idp.token_requests.append({k: str(v) for k, v in form.items()})
        auth = request.headers.get("Authorization", "")
        client = (form.get("client_id"), form.get("client_secret"))
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            client = (unquote(user), unquote(password))
        if client != (CLIENT_ID, CLIENT_SECRET):
            return web.json_response({"error": "invalid_client"}, status=401)
        issued = idp.codes.pop(str(form.get("code")), None)
        if form.get("grant_type") != "authorization_code" or issued is None:
            return web.json_response({"error": "invalid_grant"}, status=400)
        redirect_uri, claims = issued
        if form.get("redirect_uri") != redirect_uri:
            return web.json_response({"error": "invalid_grant", "error_description": "redirect_uri"}, status=400)
        access = secrets.token_urlsafe(24)
        idp.tokens[access] = claims
        return web.json_response({"access_token": access, "token_type": "Bearer", "expires_in": 300})

    async def userinfo(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        claims = idp.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        if claims is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response(claims)

    app = web.Application()
    app.router.add_get("/authorize", authorize)
    app.router.add_post("/token", token)
    app.router.add_get("/userinfo", userinfo)
    return app


def start_idp() -> HospitalIdp:
    """Serve on a free 127.0.0.1 port from a background thread (Synapse calls it while the
    test's own event loop waits on Synapse)."""
    idp = HospitalIdp(0, lambda: None)
    port, stop = serve_in_thread(_build_app(idp), "the test identity provider")
    idp.port = port
    idp.stop = stop
    return idp
