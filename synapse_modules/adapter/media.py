"""Media: the gate on every download, local files, deletion, and answering a media request.

Synapse gives modules no hook on media downloads, so the servlets' ``on_GET`` (client v1,
legacy ``/_matrix/media``, federation) are wrapped: the gate sees every download and
thumbnail request first and decides whether Synapse serves the original.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from synapse.module_api import ModuleApi

from synapse_modules.adapter.homeserver import homeserver
from synapse_modules.adapter.wrapping import wrap_once

# (module, class, endpoint kind, how the viewer authenticates)
MEDIA_SERVLETS = (
    ("synapse.rest.client.media", "DownloadResource", "download", "client"),
    ("synapse.rest.client.media", "ThumbnailResource", "thumbnail", "client"),
    ("synapse.rest.media.download_resource", "DownloadResource", "download", "legacy"),
    ("synapse.rest.media.thumbnail_resource", "ThumbnailResource", "thumbnail", "legacy"),
    ("synapse.federation.transport.server.federation", "FederationMediaDownloadServlet", "download", "federation"),
    ("synapse.federation.transport.server.federation", "FederationMediaThumbnailServlet", "thumbnail", "federation"),
)


class MediaGate(Protocol):
    async def handle(
        self,
        request: Any,
        server_name: str | None,
        media_id: str,
        kind: str,
        auth: str,
        serve_original: Callable[[], Awaitable[None]],
    ) -> None:
        """Answer ``request`` (possibly by awaiting ``serve_original``)."""


_gate: MediaGate | None = None


def install_media_gate(gate: MediaGate) -> None:
    """Route every media download through ``gate``. Idempotent per process: the servlet
    classes are patched once and always call the most recently installed gate."""
    global _gate
    _gate = gate
    for module_name, class_name, kind, auth in MEDIA_SERVLETS:
        wrap_once((module_name, class_name), "on_GET", functools.partial(_wrap, kind=kind, auth=auth))


def _wrap(original: Callable[..., Awaitable[None]], kind: str, auth: str) -> Callable[..., Awaitable[None]]:
    if auth == "federation":

        @functools.wraps(original)
        async def federation_on_get(self: Any, origin: Any, content: Any, request: Any, media_id: str, *a: Any, **kw: Any) -> None:
            async def serve() -> None:
                await original(self, origin, content, request, media_id, *a, **kw)

            if _gate is None:
                await serve()
            else:
                await _gate.handle(request, None, media_id, kind, auth, serve)

        return federation_on_get

    @functools.wraps(original)
    async def on_get(self: Any, request: Any, server_name: str, media_id: str, *a: Any, **kw: Any) -> None:
        async def serve() -> None:
            await original(self, request, server_name, media_id, *a, **kw)

        if _gate is None:
            await serve()
        else:
            await _gate.handle(request, server_name, media_id, kind, auth, serve)

    return on_get


def local_media_path(api: ModuleApi, media_id: str) -> str:
    """Where Synapse keeps the original of a local upload."""
    return homeserver(api).get_media_repository().filepaths.local_media_filepath(media_id)


async def delete_local_media(api: ModuleApi, media_ids: list[str]) -> int:
    """Delete media files, their thumbnails and database rows; returns how many went."""
    if not media_ids:
        return 0
    _, total = await homeserver(api).get_media_repository().delete_local_media_ids(media_ids)
    return total


def set_media_security_headers(request: Any) -> None:
    """The same cross-origin and sandboxing headers Synapse sets on its own media."""
    from synapse.http.server import set_corp_headers, set_cors_headers

    set_cors_headers(request)
    set_corp_headers(request)
    request.setHeader(b"Content-Security-Policy", b"sandbox; default-src 'none'; script-src 'none';")
    request.setHeader(b"X-Content-Security-Policy", b"sandbox;")
    request.setHeader(b"Referrer-Policy", b"no-referrer")


def respond_error(request: Any, code: int, errcode: str, message: str, **extra: Any) -> None:
    """A Matrix error answer (JSON, CORS headers) on a media request the gate refuses."""
    from synapse.http.server import respond_with_json

    respond_with_json(request, code, {"errcode": errcode, "error": message, **extra}, send_cors=True)


def thumbnail_args(request: Any) -> tuple[int, int, str]:
    """width, height and method of a thumbnail request, validated as Synapse does."""
    from synapse.http.servlet import parse_integer, parse_string

    width = parse_integer(request, "width", required=True)
    height = parse_integer(request, "height", required=True)
    method = parse_string(request, "method", "scale", allowed_values=("scale", "crop"))
    return width, height, method
