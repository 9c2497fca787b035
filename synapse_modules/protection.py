"""Content protection inside Synapse: no-forward, the watermarking media gate, burn-after-read.

The policy module owns one of these and calls it from its send check; the media gate is
installed on Synapse's media servlets (synapse_modules/adapter/media.py); the burn loop runs on
the one instance that runs background tasks. Everything it remembers lives in the homeserver
database, so any worker can answer and a restart forgets nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from synapse.module_api import EventBase, ModuleApi

from carematrix import identity
from carematrix.audit import actions as A
from carematrix.audit.access import HEADERS_ONLY, MediaRequest, Requester
from carematrix.audit.record import AuditRecord
from carematrix.hsdb import audit_store, burn_store, forward_store, image_store, media_store
from carematrix.policy.holder import PolicyHolder
from carematrix.policy.rooms import RoomClass
from carematrix.protect import perceptual
from carematrix.protect.extract import media_uris
from carematrix.protect.fingerprint import content_fingerprints, media_hash_fingerprint
from carematrix.rules import Verdict
from carematrix.rules.media import ARCHIVE, OTHER_SERVER, PLAIN_FILE, WATERMARK, decide_media_access
from carematrix.rules.protection import (
    NO_FORWARD,
    TRANSCRIPT_FIELD,
    burn_terms,
    not_protected_content,
)
from carematrix.watermark import MediaRejected, Viewer, render_for_viewer, sniff_image
from carematrix.watermark.remake import received_grey, upright_size
from synapse_modules import hs_schema
from synapse_modules.adapter import tables
from synapse_modules.adapter.auth import requester_of
from synapse_modules.adapter.events import censor_event
from synapse_modules.adapter.media import (
    delete_local_media,
    error_message,
    local_media_path,
    respond_error,
    set_media_security_headers,
    thumbnail_args,
)
from synapse_modules.audit_writer import current_writer
from synapse_modules.media_audit import client_address, requester_after, when_answered

log = logging.getLogger(__name__)

IMAGE_MSGTYPES = ("m.image",)
CACHE_SECONDS = 180
NOT_STORED_GIVE_UP_MS = 120_000
# Perceptual no-forward: files compared per message, and the largest one read for it.
MAX_IMAGES_PER_EVENT = 4
MAX_IMAGE_BYTES = 64 * 1024 * 1024
DELIVERIES_REMEMBERED = 10_000  # marks per process known to be on record already
# How the original is served under each allowing rule, in the download's audit record.
SERVED_AS = {ARCHIVE: "archive", PLAIN_FILE: "file"}

NOT_RECORDED = Verdict(
    False,
    "audit.unavailable",
    "下载无法记入审计记录，因此暂时不能打开此受保护文件。请重试或联系信息科。"
    " This protected file cannot be opened right now because the download could not be "
    "recorded in the audit trail. Please try again or contact IT.",
)


def _mxc_parts(uri: str) -> tuple[str, str] | None:
    if not uri.startswith("mxc://"):
        return None
    server, _, media_id = uri[6:].partition("/")
    return (server, media_id) if server and media_id and "/" not in media_id else None


class ContentProtection:
    def __init__(
        self,
        api: ModuleApi,
        holder: PolicyHolder,
        is_system: Callable[[str], bool],
        watermark_key: bytes | None,
        cache_dir: Path | None,
        media_store: str | None = None,
    ) -> None:
        self._api = api
        self._media_store = media_store  # for local_media_path on a process serving no media
        self._holder = holder
        self._is_system = is_system
        self._key = watermark_key
        self._cache_dir = cache_dir
        # marks whose delivery this process has written (a repeat within the minute needs no
        # second write; the table, not this, is what is known)
        self._delivered: OrderedDict[str, None] = OrderedDict()
        self._schema = hs_schema.gate(api)
        self._schema.start()
        self._dialect = self._schema.dialect

    # -- database ---------------------------------------------------------------------

    async def _db(self, desc: str, func: Callable[..., Any], *args: Any) -> Any:
        await self._schema.ready()
        return await self._api.run_db_interaction(desc, func, *args)

    def _is_local(self, server_name: str | None) -> bool:
        """A media request for this server's own files (None: a federation request, which
        only ever asks for ours)."""
        return server_name is None or server_name == self._api.server_name

    def _local_media_ids(self, uris: list[str]) -> list[str]:
        out = []
        for uri in uris:
            parts = _mxc_parts(uri)
            if parts and self._is_local(parts[0]):
                out.append(parts[1])
        return out

    # -- sending ----------------------------------------------------------------------

    def _service_traffic(self, event: EventBase) -> bool:
        """The service's own messages and commands to it are not protected content."""
        exempt = not_protected_content(event.type, event.content, self._is_system(event.sender))
        if exempt is not None:
            log.debug("no-forward: %s is not protected content [rule %s]", event.event_id, exempt.rule)
        return exempt is not None

    async def check_send(
        self, event: EventBase, rc: RoomClass | None, also: Callable[[Any], None] | None = None
    ) -> tuple[Verdict | None, list[str], bool]:
        """No-forward: refuse content first posted in another protected room. Returns the
        refusal (or None), the fingerprints of the file bytes (for ``after_accept``), and
        whether ``also`` ran: when the check needs the database and passes, ``also`` (the
        message's audit record) is written in the same transaction, saving a round trip."""
        if event.is_state() or self._service_traffic(event):
            return None, [], False
        prints = content_fingerprints(event.type, event.content)
        uris = media_uris(event.content)
        if prints.is_empty() and not uris:
            return None, [], False
        media_ids = self._local_media_ids(uris)
        # A copy of a protected image need not be the same file: its features are compared
        # with every protected image's (docs/protection.md, "Images that look the same").
        views = await self._images_of(media_ids, protected=False)
        dialect = self._dialect

        def check(txn: Any) -> tuple[Any, list[str], list[image_store.StoredImage], set[str], dict[str, int]]:
            if also is not None:
                # ``also`` appends to the audit chain: its lock must come before any read.
                audit_store.lock_for_append(txn, dialect)
            hashes = tables.media_sha256(txn, media_ids)
            extra = sorted({media_hash_fingerprint(h) for h in hashes.values()})
            match = forward_store.find_foreign(txn, dialect, prints, extra, event.room_id)
            shortlist: list[image_store.StoredImage] = []
            if match is None:
                for _, candidate in views:
                    shortlist += image_store.shortlisted(txn, dialect, candidate, event.room_id)
            if match is None and not shortlist and also is not None:
                also(txn)
            shortlisted_media = sorted({s.media_id for s in shortlist})
            kept = tables.known_media(txn, shortlisted_media) if shortlist else set()
            # The copies of them the sender received (watermarked for the sender): what they
            # would forward is such a copy, not the original.
            received = (media_store.latest_received(txn, dialect, event.sender, shortlisted_media)
                        if shortlist and self._key is not None else {})
            return match, extra, shortlist, kept, received

        match, extra, shortlist, kept, received = await self._db("carematrix_no_forward_check", check)
        if match is not None:
            log.info("no-forward: %s in %s matches %s", event.event_id, event.room_id, match.origin_event)
            return NO_FORWARD, extra, False
        if shortlist:
            # Verification reads originals and compares pixels: off the event loop, and
            # outside the transaction (the message's audit record is then written apart).
            copied = await self._api.defer_to_thread(self._first_copied, shortlist, views, kept, event.sender, received)
            if copied is not None:
                origin, decision, media_id = copied
                how = (
                    f"{decision.verdict.agreement:.0%} of its features agree; the original is gone"
                    if decision.residual is None
                    else f"pixel residual {decision.residual[0]:.2f}"
                    + (", against the copy the sender received" if decision.as_delivered else "")
                )
                log.info(
                    "no-forward: %s in %s: image %s looks like %s posted in %s as %s "
                    "(%d features in one geometry, %s)",
                    event.event_id, event.room_id, media_id, origin.media_id, origin.room_id,
                    origin.event_id, decision.verdict.inliers, how,
                )
                return NO_FORWARD, extra, False
            return None, extra, False
        return None, extra, also is not None

    async def _images_of(self, media_ids: list[str], *, protected: bool) -> list[tuple[str, Any]]:
        """(media ID, features) of the local uploads among ``media_ids`` that are images:
        :func:`perceptual.candidate_views` for a message being checked, the features to keep
        for one posted in a no-forward room. Files that are not images are skipped; an image
        that cannot be read is skipped with a warning (it cannot be compared)."""
        wanted = list(dict.fromkeys(media_ids))[:MAX_IMAGES_PER_EVENT]
        if not wanted:
            return []
        try:
            paths = [(m, local_media_path(self._api, m, self._media_store)) for m in wanted]
        except LookupError as exc:
            log.warning("no-forward: images cannot be compared with protected images on this process: %s", exc)
            return []

        def compute() -> list[tuple[str, Any]]:
            out: list[tuple[str, Any]] = []
            for media_id, path in paths:
                try:
                    if os.path.getsize(path) > MAX_IMAGE_BYTES:
                        log.warning("no-forward: %s is too large to compare with protected images", media_id)
                        continue
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue  # not stored here (yet): nothing to compare
                if sniff_image(data) is None:
                    continue
                try:
                    out.append((media_id, perceptual.protected_features(data) if protected else perceptual.candidate_views(data)))
                except perceptual.ImageUnreadable as exc:
                    log.warning("no-forward: image %s cannot be compared with protected images: %s", media_id, exc)
            return out

        result: list[tuple[str, Any]] = await self._api.defer_to_thread(compute)
        return result

    def _first_copied(
        self, shortlist: list[image_store.StoredImage], views: list[tuple[str, Any]], kept: set[str],
        sender: str, received: dict[str, int],
    ) -> tuple[image_store.StoredImage, perceptual.Decision, str] | None:
        """In a thread: the first shortlisted protected image one of ``views`` copies.
        ``kept``: the originals the homeserver still has; the others were deleted on
        purpose (a burnt message, a media purge) and their features decide, as designed.
        An original the homeserver has but cannot be read here is a fault worth a warning."""

        served: dict[str, tuple[int, int]] = {}  # an original's upright size, read with it

        def original(stored: image_store.StoredImage) -> Any:
            if stored.media_id not in kept:
                return None
            try:
                with open(local_media_path(self._api, stored.media_id, self._media_store), "rb") as f:
                    data = f.read()
                grey = perceptual.original_grey(data)
                served[stored.media_id] = upright_size(data)
                return grey
            except (OSError, LookupError, perceptual.ImageUnreadable) as exc:
                log.warning("no-forward: the original of protected image %s cannot be read (%s); deciding on its features",
                            stored.media_id, exc)
                return None

        def delivered(stored: image_store.StoredImage, grey: Any) -> list[Any]:
            """The copy ``sender`` last received of ``stored``, in grey: the very bytes when
            the watermark cache still has them, else made again from the original just read
            (the same viewer, minute and mark give the same picture); none if they received
            none."""
            minute = received.get(stored.media_id)
            size = served.get(stored.media_id)
            if minute is None or size is None or self._key is None:
                return []
            mark_id = media_store.mark_id_for(stored.media_id, sender, minute)
            cached = self._cache_path(mark_id, None)
            try:
                if cached is not None and cached.is_file():
                    # served within the last minutes: the very bytes the sender received
                    return [perceptual.original_grey(cached.read_bytes().partition(b"\n")[2])]
            except (OSError, perceptual.ImageUnreadable) as exc:
                log.warning("no-forward: the cached copy of protected image %s that %s received cannot be read (%s); "
                            "making it again", stored.media_id, sender, exc)
            return [received_grey(grey, size, self._viewer(sender, minute), self._key, mark_id)]

        for media_id, candidate in views:
            found = image_store.first_copied(shortlist, candidate, original, delivered)
            if found is not None:
                return found[0], found[1], media_id
        return None

    async def after_accept(self, event: EventBase, rc: RoomClass | None, hash_prints: list[str]) -> None:
        """Bookkeeping for an accepted message, committed before the client is answered:
        its fingerprints (no-forward rooms), its files (watermark rooms), its burn."""
        if event.is_state():
            return
        protection = rc.protection if rc is not None else None
        now = int(time.time() * 1000)
        prints: list[str] = []
        uris = media_uris(event.content)
        images: list[tuple[str, Any]] = []
        if protection is not None and protection.no_forward and not self._service_traffic(event):
            prints = sorted(content_fingerprints(event.type, event.content).all()) + hash_prints
            images = await self._images_of(self._local_media_ids(uris), protected=True)
        postings = []
        if protection is not None and protection.watermark:
            is_image = event.content.get("msgtype") in IMAGE_MSGTYPES or event.type == "m.sticker"
            main_url = event.content.get("url")
            for uri in uris:
                local = self._local_media_ids([uri])
                if not local:
                    continue
                media_id = local[0]
                # The thumbnail of any file is an image; the file itself only if it is one.
                kind = "image" if is_image or uri != main_url else "file"
                postings.append(
                    media_store.ProtectedPosting(media_id, event.room_id, event.event_id, kind, protection.other_files)
                )
        terms = burn_terms(self._holder.current, rc, event.content)
        burn = None
        late = await self._late_transcript(event, now)
        if late is not None:
            burn = late
        elif terms is not None:
            burn = burn_store.PendingBurn(
                event_id=event.event_id, room_id=event.room_id, sender=event.sender, sent_at=now,
                grace_ms=terms.grace_seconds * 1000, deadline=now + terms.ttl_seconds * 1000,
                recipients=tuple(await self._recipients(event)), media=tuple(uris),
                all_read_at=None, burn_at=now + terms.ttl_seconds * 1000,
            )
        if not (prints or images or postings or burn):
            return
        dialect = self._dialect

        def store(txn: Any) -> None:
            if prints:
                forward_store.record_origin(txn, dialect, prints, event.room_id, event.event_id, now)
            for media_id, features in images:
                image_store.record_image(txn, dialect, event.room_id, event.event_id, media_id, features, now)
            media_store.record_postings(txn, dialect, postings, now)
            if burn is not None:
                burn_store.add(txn, dialect, burn)

        await self._db("carematrix_protect_record", store)

    async def _late_transcript(self, event: EventBase, now: int) -> burn_store.PendingBurn | None:
        """A transcript the service posts after its voice message has burned (the reader was
        quicker than the recogniser) burns at once: it is the voice message's content."""
        transcript = event.content.get(TRANSCRIPT_FIELD)
        if not self._is_system(event.sender) or not isinstance(transcript, Mapping):
            return None
        voice = transcript.get("event_id")
        if not isinstance(voice, str) or not await self._db("carematrix_burn_state", burn_store.burned, self._dialect, voice):
            return None
        return burn_store.PendingBurn(
            event_id=event.event_id, room_id=event.room_id, sender=event.sender, sent_at=now, grace_ms=0,
            deadline=now, recipients=(), media=(), all_read_at=now, burn_at=now,
        )

    async def _recipients(self, event: EventBase) -> list[str]:
        state = await self._api.get_room_state(event.room_id, [("m.room.member", None)])
        return sorted(
            e.state_key
            for e in state.values()
            if e.content.get("membership") == "join" and e.state_key != event.sender and not self._is_system(e.state_key)
        )

    # -- media gate -------------------------------------------------------------------

    async def handle(
        self,
        request: Any,
        server_name: str | None,
        media_id: str,
        kind: str,
        auth: str,
        serve_original: Callable[[], Awaitable[None]],
    ) -> None:
        """Answer a download or thumbnail request, and record it once from the answer the
        client got (synapse_modules/media_audit.py). A protected file's success is on record
        before its bytes are sent; everything else is recorded as its answer goes out."""
        writer = current_writer()
        access = MediaRequest(
            kind=kind, mxc=f"mxc://{server_name or self._api.server_name}/{media_id}",
            source=client_address(request), process=writer.process if writer is not None else "main",
        )
        served: list[AuditRecord] = []  # the success recorded before the bytes were sent
        # A HEAD request is answered with headers only: whoever sent it received no file,
        # so its record is not a success (an auditor asks "did they get it?").
        head = request.method == b"HEAD"

        def answered(status: int, complete: bool) -> None:
            if writer is None:
                return
            if access.requester is None and access.server is None:
                access.requester, access.server = requester_after(request)
            if head and 200 <= status < 300:
                access.reason = HEADERS_ONLY
            final = access.record(status, complete and not head)
            if served:
                if 200 <= status < 300:
                    return  # on record already (the bytes were on their way)
                log.warning(
                    "media gate: %s was recorded as served to %s, but the answer was %s: recording that too",
                    access.mxc, served[0].actor, status,
                )
            writer.record_soon(final)

        when_answered(request, answered)
        try:
            await self._answer(request, server_name, media_id, kind, auth, serve_original, access, served)
        except Exception as exc:
            access.reason = access.reason or error_message(exc)
            raise

    async def _answer(
        self,
        request: Any,
        server_name: str | None,
        media_id: str,
        kind: str,
        auth: str,
        serve_original: Callable[[], Awaitable[None]],
        access: MediaRequest,
        served: list[AuditRecord],
    ) -> None:
        local = self._is_local(server_name)
        postings = await self._db("carematrix_media_postings", media_store.postings_of, self._dialect, media_id) if local else []
        if not postings:
            # Not a protected file: Synapse answers (and, on the client API, finds who asks).
            if auth == "legacy":
                access.requester = await self._requester_if_any(request)
            await serve_original()
            return
        mxc = access.mxc
        access.room = room = postings[0].room_id
        other_server = auth == "federation"
        who = None if other_server else await requester_of(self._api, request, required=auth == "client")
        access.requester = who
        user_id = who.user if who is not None else None
        is_system = user_id is not None and self._is_system(user_id)
        is_member = (
            user_id is not None and not is_system and await self._member_of_any(user_id, [p.room_id for p in postings])
        )
        verdict = decide_media_access(
            postings, other_server=other_server, signed_in=user_id is not None, is_system=is_system, is_member=is_member
        )
        access.rule = verdict.rule or None
        if verdict == OTHER_SERVER:
            # Federation is off by default; to another server a protected file does not exist.
            log.info("media gate: %s refused to another server [rule %s]", mxc, verdict.rule)
            access.reason = verdict.reason
            respond_error(request, 404, "M_NOT_FOUND", "Not found")
            return
        if user_id is None or not verdict.allowed:
            log.info("policy denial rule=%s user=%s room=%s action=%s %s", verdict.rule, user_id, room, kind, mxc)
            access.reason = verdict.reason
            status, errcode = (401, "M_MISSING_TOKEN") if user_id is None else (403, "M_FORBIDDEN")
            respond_error(request, status, errcode, verdict.message(), **{"org.carematrix.rule": verdict.rule})
            return
        if verdict == WATERMARK:
            await self._serve_watermarked(request, media_id, kind, user_id, access, served)
            return
        # The original: to the hospital's service (it archives case rooms into the EMR)
        # or, for a file other than an image, to a member.
        access.details["protected"] = SERVED_AS[verdict]
        if not os.path.exists(local_media_path(self._api, media_id)):
            access.reason = "此文件的原件已丢失。 The original of this file is missing."
            respond_error(request, 404, "M_NOT_FOUND", access.reason)
            return
        if await self._record_served(request, access, served):
            await serve_original()

    async def _requester_if_any(self, request: Any) -> Requester | None:
        """Who sends a request to an endpoint that needs no token (None: no valid one)."""
        try:
            return await requester_of(self._api, request, required=False)
        except Exception:
            return None

    async def _serve_watermarked(
        self, request: Any, media_id: str, kind: str, user_id: str, access: MediaRequest, served: list[AuditRecord]
    ) -> None:
        thumb = thumbnail_args(request) if kind == "thumbnail" else None
        minute = int(time.time()) // 60 * 60
        mark_id = media_store.mark_id_for(media_id, user_id, minute)
        access.details.update({"protected": "watermark", "mark_id": mark_id})
        try:
            data, content_type = await self._rendered(media_id, user_id, minute, mark_id, thumb)
        except MediaRejected as exc:
            access.reason = f"此图片无法显示。 This image cannot be shown: {exc.reason}"
            respond_error(request, 415, "M_UNKNOWN", access.reason)
            return
        except FileNotFoundError:
            access.reason = "此图片的原件已丢失。 The original of this image is missing."
            respond_error(request, 404, "M_NOT_FOUND", access.reason)
            return
        if await self._record_served(request, access, served):
            if request.method != b"HEAD":
                # A copy this viewer now has: what a leak is traced to, and what no-forward
                # compares their posts with. A HEAD answer, or a refusal, gives them none.
                await self._record_delivery(media_store.Delivery(mark_id, media_id, user_id, minute, int(time.time() * 1000)))
            self._respond_private(request, data, content_type)

    async def _record_delivery(self, delivery: media_store.Delivery) -> None:
        if delivery.mark_id in self._delivered:
            return
        await self._db("carematrix_watermark_delivery", media_store.record_delivery, self._dialect, delivery)
        self._delivered[delivery.mark_id] = None
        if len(self._delivered) > DELIVERIES_REMEMBERED:
            self._delivered.popitem(last=False)

    async def _member_of_any(self, user_id: str, rooms: list[str]) -> bool:
        for room_id in rooms:
            state = await self._api.get_room_state(room_id, [("m.room.member", user_id)])
            member = state.get(("m.room.member", user_id))
            if member is not None and member.content.get("membership") == "join":
                return True
        return False

    async def _record_served(self, request: Any, access: MediaRequest, served: list[AuditRecord]) -> bool:
        """Fail closed: a protected file is served only once its download is on record (a
        HEAD request sends no file: it is recorded as answered, like any other)."""
        writer = current_writer()
        if writer is None or request.method == b"HEAD":
            return True
        record = access.record(200, True)
        try:
            await writer.record(record)
        except Exception:
            log.exception("audit record for protected media %s failed; refusing", access.mxc)
            access.reason = NOT_RECORDED.reason
            access.rule = NOT_RECORDED.rule
            respond_error(request, 503, "M_UNKNOWN", NOT_RECORDED.message())
            return False
        served.append(record)
        return True

    def _viewer(self, user_id: str, minute: int) -> Viewer:
        staff = self._holder.current.staff_for_localpart(identity.localpart(user_id))
        return Viewer(
            name=staff.name if staff else user_id,
            staff_number=staff.staff_number if staff else "-",
            user_id=user_id,
            minute=datetime.fromtimestamp(minute).astimezone(),
        )

    def _cache_path(self, mark_id: str, thumb: tuple[int, int, str] | None) -> Path | None:
        if self._cache_dir is None:
            return None
        key = hashlib.sha256(f"{mark_id}|{thumb}".encode()).hexdigest()
        return self._cache_dir / key[:2] / key

    async def _rendered(
        self, media_id: str, user_id: str, minute: int, mark_id: str, thumb: tuple[int, int, str] | None
    ) -> tuple[bytes, str]:
        if self._key is None:
            raise MediaRejected("watermarking is not configured on this server", "unconfigured")
        cached = self._cache_path(mark_id, thumb)
        if cached is not None:
            try:
                blob = cached.read_bytes()
                stored_type, _, data = blob.partition(b"\n")
                return data, stored_type.decode()
            except OSError:
                pass
        path = local_media_path(self._api, media_id)
        viewer = self._viewer(user_id, minute)
        key = self._key

        def render() -> tuple[bytes, str]:
            with open(path, "rb") as f:
                original = f.read()
            if sniff_image(original) is None:
                raise MediaRejected("it is not an image format this server can mark", "unsupported")
            rendered = render_for_viewer(original, viewer, key, mark_id, thumbnail=thumb)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_bytes(rendered.content_type.encode() + b"\n" + rendered.data)
                os.replace(tmp, cached)
            return rendered.data, rendered.content_type

        rendered: tuple[bytes, str] = await self._api.defer_to_thread(render)
        return rendered

    def _respond_private(self, request: Any, data: bytes, content_type: str) -> None:
        """Per-viewer bytes: never cached by a browser or proxy, never revalidated by ETag."""
        set_media_security_headers(request)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", content_type.encode())
        request.setHeader(b"Content-Length", str(len(data)).encode())
        request.setHeader(b"Cache-Control", b"private, no-store, max-age=0")
        request.setHeader(b"Pragma", b"no-cache")
        request.setHeader(b"Content-Disposition", b"inline")
        request.write(data)
        request.finish()

    def evict_cache(self) -> None:
        """Renderings are per minute: anything older than a few minutes is never asked again."""
        if self._cache_dir is None or not self._cache_dir.is_dir():
            return
        cutoff = time.time() - CACHE_SECONDS
        for sub in self._cache_dir.iterdir():
            for f in sub.iterdir() if sub.is_dir() else ():
                try:
                    if f.stat().st_mtime < cutoff:
                        f.unlink()
                except OSError:
                    pass

    # -- burn after read --------------------------------------------------------------

    async def burn_tick(self) -> None:
        pending = await self._db("carematrix_burn_pending", burn_store.pending, self._dialect)
        now = int(time.time() * 1000)
        for burn in pending:
            burn_at = burn.burn_at
            if burn.all_read_at is None:
                readers = await self._db("carematrix_burn_readers", tables.readers_since, burn.room_id, burn.event_id)
                if readers is None:
                    if now - burn.sent_at > NOT_STORED_GIVE_UP_MS:
                        await self._db("carematrix_burn_done", burn_store.mark_burned, self._dialect, burn.event_id, now, "never stored")
                    continue
                if not burn_store.unread_by(burn.recipients, readers):
                    burn_at = burn_store.burn_time(burn, now)
                    await self._db("carematrix_burn_read", burn_store.mark_all_read, self._dialect, burn.event_id, now, burn_at)
            if burn_at <= now:
                await self._burn(burn, now)

    async def _burn(self, burn: burn_store.PendingBurn, now: int) -> None:
        # Files first, then the stored content (event JSON, edits, search row), then the
        # redaction that makes every client drop the message: by the time anyone sees it
        # gone, nothing of it is left on the server.
        media_ids = self._local_media_ids(list(burn.media))
        deleted = await delete_local_media(self._api, media_ids)
        edits = await self._db("carematrix_burn_edits", tables.edits_of, burn.event_id)
        # The service's messages that refer to this one (a voice message's transcript) hold
        # its content too: they burn with it.
        companions = [
            (event_id, sender)
            for event_id, sender in await self._db("carematrix_burn_references", tables.references_to, burn.event_id)
            if self._is_system(sender)
        ]
        for event_id in [burn.event_id, *edits, *(c for c, _ in companions)]:
            await censor_event(self._api, event_id)
        outcome = "purged"
        try:
            await self._api.create_and_send_event_into_room(
                {
                    "type": "m.room.redaction", "room_id": burn.room_id, "sender": burn.sender,
                    "redacts": burn.event_id,
                    "content": {"redacts": burn.event_id, "reason": "burn after read"},
                }
            )
        except Exception as exc:  # e.g. the sender has left: the stored content is gone anyway
            log.warning("burn: redaction of %s as its sender failed: %s", burn.event_id, exc)
            outcome = "purged without redaction event"
        for event_id, sender in companions:
            try:
                await self._api.create_and_send_event_into_room(
                    {
                        "type": "m.room.redaction", "room_id": burn.room_id, "sender": sender, "redacts": event_id,
                        "content": {"redacts": event_id, "reason": "burn after read"},
                    }
                )
            except Exception as exc:  # its stored content is gone already
                log.warning("burn: redaction of %s (refers to %s) failed: %s", event_id, burn.event_id, exc)
        dialect = self._dialect

        def done(txn: Any) -> None:
            media_store.forget_media(txn, dialect, media_ids)
            burn_store.mark_burned(txn, dialect, burn.event_id, now, outcome)
            for event_id, _ in companions:  # a burn of its own, if it had one, is done too
                burn_store.mark_burned(txn, dialect, event_id, now, f"burned with {burn.event_id}")

        await self._db("carematrix_burn_done", done)
        writer = current_writer()
        if writer is not None:
            writer.record_soon(
                AuditRecord(
                    actor="carematrix", action=A.MESSAGE_BURN, object=burn.event_id, room=burn.room_id,
                    outcome=A.SUCCESS, process=writer.process,
                    details={"sender": burn.sender, "edits": len(edits), "media_deleted": deleted,
                             "with_it": len(companions),
                             "read_by_all": burn.all_read_at is not None, "result": outcome},
                )
            )
        log.info("burnt %s in %s (%s, %d files)", burn.event_id, burn.room_id, outcome, deleted)
