"""The appservice's calls to its homeserver that mautrix has no typed method for — Synapse's
admin API, our modules' endpoints (``/_synapse/client/carematrix/…``), raw client-server
calls — made with mautrix's HTTP client on the appservice's own session and token, acting as
the bot or, with ``as_user``, as a user of its namespaces.

What this adds to ``HTTPAPI.request`` is the contract its callers rely on: a failure names
the endpoint and the homeserver's answer (:class:`MatrixCallFailed`, whether it may pass),
and a homeserver that does not answer is one exception (:class:`HomeserverUnreachable`).

No call is retried here (mautrix's retries are turned off per call): mautrix would retry
only 502-504 and lost connections, after 4, 8, 16 s, holding a page or an org sync behind one
wedged request; 429 it does not retry at all (the appservice is not rate-limited — its
registration says ``rate_limited: false`` — nor is the admin API). The callers decide: the
on-call outbox retries a passing failure with its own back-off, audit records are tried
again within a bound, org sync reports the failure and plans the step again on its next
run."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from mautrix.api import HTTPAPI, Method
from mautrix.client import ClientAPI
from mautrix.errors import MatrixConnectionError, MatrixRequestError, MatrixUnknownRequestError

from appservice.timing import call_step
from carematrix import identity


class MatrixCallFailed(Exception):
    """The homeserver answered with an error."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.errcode = body.get("errcode") if isinstance(body, dict) else None
        super().__init__(f"{method} {path}: HTTP {status} {body}")

    @property
    def transient(self) -> bool:
        """Server trouble and rate limits pass; a refusal (other 4xx) stays a refusal."""
        return self.status >= 500 or self.status == 429

    @property
    def reason(self) -> str:
        """"HTTP 403 M_FORBIDDEN: You don't have permission to invite users": the homeserver's
        own words, fit to show to the people affected."""
        detail = str((self.body.get("error") if isinstance(self.body, dict) else self.body) or "")[:200]
        return f"HTTP {self.status}" + (f" {self.errcode}" if self.errcode else "") + (f": {detail}" if detail else "")


class HomeserverUnreachable(MatrixConnectionError):
    """No answer from the homeserver (connection refused or lost, timed out): it may pass."""

    transient = True

    def __init__(self, method: str, path: str, cause: BaseException) -> None:
        detail = f"{type(cause).__name__}{': ' + str(cause) if str(cause) else ''}"
        self.reason = f"the homeserver could not be reached ({detail})"
        super().__init__(f"{method} {path}: {self.reason}")


def _failed(method: str, path: str, exc: MatrixRequestError) -> MatrixCallFailed:
    body: Any = {"errcode": exc.errcode, "error": exc.message} if exc.errcode else None
    if isinstance(exc, MatrixUnknownRequestError):
        try:  # the whole answer, with fields beside errcode and error
            body = json.loads(exc.text)
        except ValueError:
            body = body or exc.text
    return MatrixCallFailed(method, path, exc.http_status, body)


class Homeserver:
    """``api``: mautrix's HTTP API whose session and token to use — the appservice's, which
    exists only once the appservice has started (hence a function), or any other (the
    benchmark's admin on a plain Synapse)."""

    def __init__(self, api: Callable[[], HTTPAPI], server_name: str) -> None:
        self._api = api
        self._client: ClientAPI | None = None
        self.server = server_name

    @property
    def client(self) -> ClientAPI:
        """A plain mautrix client on that session and token. Not the appservice's own API
        object: that one adds ``user_id`` to every request, which the admin API reads as a
        filter (``GET /_synapse/admin/v2/users?user_id=@bot…`` lists the bot alone). With
        the appservice token and no ``user_id``, Synapse acts as the bot."""
        if self._client is None:
            api = self._api()
            plain = HTTPAPI(api.base_url, api.token, client_session=api.session, log=api.log)
            self._client = ClientAPI(api=plain)
        return self._client

    def uid(self, localpart: str) -> str:
        return identity.user_id(localpart, self.server)

    def with_token(self, token: str) -> Homeserver:
        """The same homeserver as a user with their own access token (their push rules),
        over the same connection pool."""
        api = self.client.api
        return Homeserver(lambda: HTTPAPI(api.base_url, token, client_session=api.session, log=api.log), self.server)

    async def call(self, method: str, path: str, body: Any = None, as_user: str | None = None) -> Any:
        """``path`` with its query string, if any; ``as_user``: act as a user of the
        appservice's namespaces (appservice token only)."""
        query: dict[str, str] = {}
        if "?" in path:
            path, _, query_string = path.partition("?")
            query = dict(parse_qsl(query_string, keep_blank_values=True))
        if as_user is not None:
            query["user_id"] = as_user
        return await self._request(method, path, body, query=query)

    async def upload(self, data: bytes, content_type: str, filename: str) -> str:
        """Put a file in the media repository as the bot; returns its mxc:// URI."""
        answer = await self._request(
            "POST", "/_matrix/media/v3/upload", data,
            headers={"Content-Type": content_type}, query={"filename": filename},
        )
        return str(answer["content_uri"])

    async def download(self, mxc: str) -> bytes:
        """A file from the media repository as the bot (authenticated media). On mautrix's
        session and URL, not its ``download_media``: that one drops the homeserver's answer
        to a failed download, and a case archive tells the room why a file is missing
        ("M_NOT_FOUND: …")."""
        api = self.client.api
        path = f"download of {mxc}"
        try:
            url = api.get_download_url(mxc, authenticated=True)
            async with api.session.get(url, headers={"Authorization": f"Bearer {api.token}"}) as resp:
                if resp.status >= 300:
                    text = await resp.text()
                    try:
                        body: Any = json.loads(text)
                    except ValueError:
                        body = text
                    raise MatrixCallFailed("GET", path, resp.status, body)
                return await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HomeserverUnreachable("GET", path, exc) from exc

    async def _request(
        self, method: str, path: str, content: Any, *,
        headers: dict[str, str] | None = None, query: dict[str, str] | None = None,
    ) -> Any:
        try:
            with call_step(method, path):
                return await self.client.api.request(
                    Method(method), path, content, headers=headers, query_params=query, retry_count=0,
                )
        except MatrixRequestError as exc:
            raise _failed(method, path, exc) from exc
        except (MatrixConnectionError, TimeoutError) as exc:
            raise HomeserverUnreachable(method, path, exc) from exc
