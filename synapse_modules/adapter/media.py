"""Media: the gate on every download, the upload observer, local files, deletion, and
answering a media request.

Synapse internals used here: the media servlets' ``on_GET``, the upload servlets and the
media repository (below); ``hs.config.media.can_load_media_repo`` and
``synapse.media.filepath.MediaFilePaths`` for a local file's path on a process without a
media repository (:func:`local_media_path`).

Synapse gives modules no hook on media downloads, so the servlets' ``on_GET`` (client v1,
legacy ``/_matrix/media``, federation) are wrapped: the gate sees every download and
thumbnail request first and decides whether Synapse serves the original. Nor does it tell
modules about uploads: the upload servlets are wrapped so the audit sees every upload
request, and the media repository's store call so it learns the new file's URI.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
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


def local_media_path(api: ModuleApi, media_id: str, media_store: str | None = None) -> str:
    """Where Synapse keeps the original of a local upload.

    A process that serves media asks its media repository. One that does not (a worker with
    ``enable_media_repo: false``, such as a client worker checking a message's image for
    no-forward) cannot build one, and its configuration then lacks the store's path: it
    lays the path out from ``media_store`` (the deployment's ``media_store_path``) the way
    Synapse does (``MediaFilePaths``). Raises LookupError when neither is available."""
    hs = homeserver(api)
    if hs.config.media.can_load_media_repo:
        return hs.get_media_repository().filepaths.local_media_filepath(media_id)
    if not media_store:
        raise LookupError("this process serves no media and knows no media_store_path")
    from synapse.media.filepath import MediaFilePaths

    return MediaFilePaths(media_store).local_media_filepath(media_id)


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


def error_message(exc: BaseException) -> str:
    """What the client is told about ``exc`` (a SynapseError's message; else its type)."""
    return str(getattr(exc, "msg", "") or type(exc).__name__)


def thumbnail_args(request: Any) -> tuple[int, int, str]:
    """width, height and method of a thumbnail request, validated as Synapse does, and a size
    a marked thumbnail can have (1 to 4,096 pixels a side): anything else is the client's
    error (400), not a server error."""
    from synapse.api.errors import Codes, SynapseError
    from synapse.http.servlet import parse_integer, parse_string

    from carematrix.watermark.thumbnail import MAX_THUMBNAIL_SIDE, check_request

    width = parse_integer(request, "width", required=True)
    height = parse_integer(request, "height", required=True)
    method = parse_string(request, "method", "scale", allowed_values=("scale", "crop"))
    try:
        return check_request((width, height, method))
    except ValueError:
        raise SynapseError(
            400, f"缩略图的宽和高须为 1 到 {MAX_THUMBNAIL_SIDE} 像素。 "
            f"Thumbnail width and height must be 1 to {MAX_THUMBNAIL_SIDE} pixels.", Codes.INVALID_PARAM,
        ) from None


# -- uploads ----------------------------------------------------------------------------------

# (module, class, method) of the servlets that take an upload's bytes: POST
# /_matrix/media/{r0,v3,v1}/upload and PUT /_matrix/media/v3/upload/{server}/{media_id} (the
# second half of an asynchronous upload).
UPLOAD_SERVLETS = (
    ("synapse.rest.media.upload_resource", "UploadServlet", "on_POST"),
    ("synapse.rest.media.upload_resource", "AsyncUploadServlet", "on_PUT"),
)
MEDIA_REPOSITORY = ("synapse.media.media_repository", "MediaRepository")


@dataclass
class StoredUpload:
    """What the media repository stored for an upload request (None until it stored it)."""

    mxc: str | None = None
    size: int | None = None
    content_type: str | None = None
    error: str | None = None  # the message of the error Synapse answered with, if any


UploadObserver = Callable[[Any, StoredUpload], Awaitable[None]]
_upload_observer: UploadObserver | None = None
_stored: ContextVar[StoredUpload | None] = ContextVar("carematrix_stored_upload", default=None)


def install_upload_observer(observer: UploadObserver) -> None:
    """Call ``observer(request, stored)`` for every upload request, before Synapse handles
    it; ``stored`` is filled in when the media repository has stored the file (its URI, size
    and type), so the observer can read it once the request is answered. Synapse tells modules
    nothing about uploads, and its request log does not have the new URI."""
    global _upload_observer
    _upload_observer = observer
    for module_name, class_name, method in UPLOAD_SERVLETS:
        wrap_once((module_name, class_name), method, _observing_uploads)
    wrap_once(MEDIA_REPOSITORY, "create_or_update_content", _noting_stored)


def _observing_uploads(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def on_upload(self: Any, request: Any, *a: Any, **kw: Any) -> Any:
        stored = StoredUpload()
        if _upload_observer is not None:
            await _upload_observer(request, stored)
        token = _stored.set(stored)
        try:
            return await original(self, request, *a, **kw)
        except Exception as exc:
            stored.error = error_message(exc)
            raise
        finally:
            _stored.reset(token)

    return on_upload


def _noting_stored(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def create_or_update_content(
        self: Any, media_type: str, upload_name: str | None, content: Any, content_length: int, auth_user: Any,
        *a: Any, **kw: Any,
    ) -> Any:
        uri = await original(self, media_type, upload_name, content, content_length, auth_user, *a, **kw)
        stored = _stored.get()
        if stored is not None:
            stored.mxc, stored.size, stored.content_type = str(uri), content_length, media_type
        return uri

    return create_or_update_content
