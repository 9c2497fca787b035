"""An HTTP endpoint of a module whose handler is a coroutine. Twisted resources answer
synchronously; this one runs the handler in the background and answers when it is done."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from synapse.module_api import ModuleApi, SynapseRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

log = logging.getLogger(__name__)

# (status, JSON body) or (status, (content type, text))
Handler = Callable[[SynapseRequest], Awaitable[tuple[int, Any]]]


def body_of(request: Request) -> bytes:
    """The request's body (none: empty)."""
    return request.content.read() if request.content is not None else b""


class AsyncJsonResource(Resource):
    isLeaf = True

    def __init__(self, api: ModuleApi, desc: str, get: Handler | None = None, post: Handler | None = None) -> None:
        super().__init__()
        self._api = api
        self._desc = desc
        self._get, self._post = get, post

    def render_GET(self, request: Request) -> Any:  # noqa: N802 - twisted naming
        return self._dispatch(self._get, request)

    def render_POST(self, request: Request) -> Any:  # noqa: N802
        return self._dispatch(self._post, request)

    def _dispatch(self, handler: Handler | None, request: Request) -> Any:
        if handler is None:
            request.setResponseCode(405)
            return b'{"errcode":"M_UNRECOGNIZED","error":"method not allowed"}'

        # Synapse serves module resources with its own request class (what
        # ModuleApi.get_user_by_req reads the access token from).
        synapse_request = cast(SynapseRequest, request)

        async def respond() -> None:
            try:
                code, body = await handler(synapse_request)
            except Exception as exc:  # auth failures arrive as SynapseError
                code = getattr(exc, "code", 500)
                body = {"errcode": getattr(exc, "errcode", "M_UNKNOWN"), "error": getattr(exc, "msg", "internal error")}
                if code == 500:
                    log.exception("%s failed", self._desc)
            if isinstance(body, tuple):
                content_type, text = body
                payload = text.encode()
            else:
                content_type, payload = "application/json", json.dumps(body).encode()
            request.setResponseCode(int(code))
            request.setHeader(b"Content-Type", content_type.encode())
            request.setHeader(b"Cache-Control", b"no-store")
            request.write(payload)
            request.finish()

        self._api.run_as_background_process(self._desc, respond)
        return NOT_DONE_YET
