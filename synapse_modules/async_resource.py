"""An HTTP endpoint of a module whose handler is a coroutine. Twisted resources answer
synchronously; this one runs the handler in the background and answers when it is done."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from synapse.module_api import ModuleApi
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

log = logging.getLogger(__name__)

# (status, JSON body) or (status, (content type, text))
Handler = Callable[[Request], Awaitable[tuple[int, Any]]]


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

        async def respond() -> None:
            try:
                code, body = await handler(request)
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
