"""Everything CareMatrix needs from Synapse beyond its module API, in one small adapter.

Synapse gives modules no hook on media downloads and no way to purge a message at once, so
this file (and only this file, with compat.py and access_log.py) touches Synapse internals:

* the media servlets' ``on_GET`` (client v1, legacy ``/_matrix/media``, federation) are
  wrapped so the media gate sees every download and thumbnail request first;
* local media file paths, deletion of media with their thumbnails;
* receipts and stream positions (who has read a message);
* censoring a message's stored JSON and deleting its full-text search row;
* persisting many joins into one room as one batch (org sync populating a new room);
* checks on every new event that need the event only, without the room state Synapse
  loads for every ``check_event_allowed`` callback.

tests/unit/test_synapse_internals.py checks each of these against the installed Synapse and
fails loudly on an upgrade that moves them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

# (module, class, endpoint kind, how the viewer authenticates)
MEDIA_SERVLETS = (
    ("synapse.rest.client.media", "DownloadResource", "download", "client"),
    ("synapse.rest.client.media", "ThumbnailResource", "thumbnail", "client"),
    ("synapse.rest.media.download_resource", "DownloadResource", "download", "legacy"),
    ("synapse.rest.media.thumbnail_resource", "ThumbnailResource", "thumbnail", "legacy"),
    ("synapse.federation.transport.server.federation", "FederationMediaDownloadServlet", "download", "federation"),
    ("synapse.federation.transport.server.federation", "FederationMediaThumbnailServlet", "thumbnail", "federation"),
)
_WRAPPED = "_carematrix_media_gate"


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
        _wrap_once((module_name, class_name), "on_GET", functools.partial(_wrap, kind=kind, auth=auth))


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

        setattr(federation_on_get, _WRAPPED, True)
        return federation_on_get

    @functools.wraps(original)
    async def on_get(self: Any, request: Any, server_name: str, media_id: str, *a: Any, **kw: Any) -> None:
        async def serve() -> None:
            await original(self, request, server_name, media_id, *a, **kw)

        if _gate is None:
            await serve()
        else:
            await _gate.handle(request, server_name, media_id, kind, auth, serve)

    setattr(on_get, _WRAPPED, True)
    return on_get


def hs_of(api: Any) -> Any:
    return api._hs


def is_local_server(api: Any, server_name: str | None) -> bool:
    return server_name is None or hs_of(api).is_mine_server_name(server_name)


def local_media_path(api: Any, media_id: str) -> str:
    return hs_of(api).get_media_repository().filepaths.local_media_filepath(media_id)


async def requester_user_id(api: Any, request: Any, required: bool) -> str | None:
    """The signed-in user of a media request; None when ``required`` is False and the request
    carries no access token (legacy endpoints are unauthenticated)."""
    auth = hs_of(api).get_auth()
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
    return requester.user.to_string()


def set_media_security_headers(request: Any) -> None:
    """The same cross-origin and sandboxing headers Synapse sets on its own media."""
    from synapse.http.server import set_corp_headers, set_cors_headers

    set_cors_headers(request)
    set_corp_headers(request)
    request.setHeader(b"Content-Security-Policy", b"sandbox; default-src 'none'; script-src 'none';")
    request.setHeader(b"X-Content-Security-Policy", b"sandbox;")
    request.setHeader(b"Referrer-Policy", b"no-referrer")


def respond_error(request: Any, code: int, errcode: str, message: str, **extra: Any) -> None:
    from synapse.http.server import respond_with_json

    respond_with_json(request, code, {"errcode": errcode, "error": message, **extra}, send_cors=True)


async def delete_local_media(api: Any, media_ids: list[str]) -> int:
    """Delete media files, their thumbnails and database rows; returns how many went."""
    if not media_ids:
        return 0
    _, total = await hs_of(api).get_media_repository().delete_local_media_ids(media_ids)
    return total


def media_sha256(txn: Any, media_ids: list[str]) -> dict[str, str]:
    """Synapse stores the SHA-256 of every local upload; a re-upload of the same bytes gets a
    new media ID with the same hash."""
    if not media_ids:
        return {}
    marks = ",".join("?" for _ in media_ids)
    txn.execute(
        f"SELECT media_id, sha256 FROM local_media_repository WHERE media_id IN ({marks}) "
        "AND sha256 IS NOT NULL",
        tuple(media_ids),
    )
    return {row[0]: row[1] for row in txn.fetchall()}


def readers_since(txn: Any, room_id: str, event_id: str) -> set[str] | None:
    """Users whose public or private read receipt in ``room_id`` is at or after ``event_id``
    (any thread), read from the database so receipts sent while nothing was listening count.
    None if the event is not stored (yet, or any more)."""
    txn.execute("SELECT stream_ordering FROM events WHERE event_id = ?", (event_id,))
    row = txn.fetchone()
    if row is None:
        return None
    txn.execute(
        "SELECT DISTINCT r.user_id FROM receipts_linearized AS r "
        "JOIN events AS e ON e.event_id = r.event_id "
        "WHERE r.room_id = ? AND r.receipt_type IN ('m.read', 'm.read.private') "
        "AND e.stream_ordering >= ?",
        (room_id, row[0]),
    )
    return {r[0] for r in txn.fetchall()}


def edits_of(txn: Any, event_id: str) -> list[str]:
    txn.execute(
        "SELECT event_id FROM event_relations WHERE relates_to_id = ? AND relation_type = 'm.replace'",
        (event_id,),
    )
    return [r[0] for r in txn.fetchall()]


async def censor_event(api: Any, event_id: str) -> None:
    """Replace the stored JSON of an event with its redacted form now (Synapse otherwise
    keeps it for ``redaction_retention_period``), across every worker's event cache, and
    delete its full-text search row."""
    store = hs_of(api).get_datastores().main
    await store.expire_event(event_id)

    def drop_search_row(txn: Any) -> None:
        txn.execute("DELETE FROM event_search WHERE event_id = ?", (event_id,))

    await store.db_pool.runInteraction("carematrix_burn_search_row", drop_search_row)


@dataclass
class JoinBatch:
    """Join events built for one room, in a chain, not stored yet."""

    room_id: str
    start_state_group: int
    events: list[tuple[Any, Any]]  # (event, unpersisted context)
    final_state: dict[tuple[str, str], str]  # the room's state after the last event
    prior: list[str | None] = field(default_factory=list)  # each joiner's membership event before


async def build_joins(api: Any, room_id: str, joins: list[tuple[str, dict[str, Any]]]) -> JoinBatch:
    """Build join events for many local users in one room as one linear chain, the way
    Synapse builds a new room's initial state: each on the state the previous one leaves.
    ``store_joins`` then stores the chain in one go. One join at a time costs a whole event
    pipeline per member; a batch costs one.

    Each event passes Synapse's auth rules and the event checks (real names, the audit
    record) as it is built; clients, appservices, push, the user directory and room
    statistics learn of it from the event stream as usual once it is stored. The caller has
    checked the org scope of every user and that the room is publicly joinable, and passes
    users who are not joined yet (a join identical to the current state would make Synapse
    drop the whole batch as a duplicate).
    """
    from synapse.types import create_requester

    hs = hs_of(api)
    creator = hs.get_event_creation_handler()
    storage = hs.get_storage_controllers()
    extremities = await hs.get_datastores().main.get_forward_extremities_for_room(room_id)
    prev_event_id = max(extremities, key=lambda x: x[2])[0]  # the deepest: (event ID, state group, depth, ...)
    state_group = (await storage.state.get_state_group_for_events([prev_event_id]))[prev_event_id]
    state_map = dict(await storage.state.get_state_ids_for_group(state_group))
    batch = JoinBatch(room_id, state_group, [], state_map)
    depth = None
    for user_id, content in joins:
        event, context = await creator.create_event(
            create_requester(user_id, authenticated_entity=hs.hostname),
            {"type": "m.room.member", "room_id": room_id, "sender": user_id, "state_key": user_id,
             "content": {**content, "membership": "join"}},
            prev_event_ids=[prev_event_id],
            depth=depth,
            state_map=dict(state_map),
            for_batch=True,
            require_consent=False,
        )
        batch.events.append((event, context))
        batch.prior.append(state_map.get((event.type, event.state_key)))
        prev_event_id, depth = event.event_id, event.depth + 1
        state_map[(event.type, event.state_key)] = event.event_id
    return batch


async def store_joins(api: Any, batch: JoinBatch) -> None:
    """Store a chain from ``build_joins``: its state groups, then its events, in one go."""
    if not batch.events:
        return
    from synapse.events.snapshot import UnpersistedEventContext
    from synapse.types import UserID, create_requester

    hs = hs_of(api)
    state_store = hs.get_datastores().state
    persisted = await UnpersistedEventContext.batch_persist_unpersisted_contexts(
        batch.events, batch.room_id, batch.start_state_group, state_store
    )
    _remember_state_groups(state_store, batch, [c.state_group for _, c in persisted])
    joiners = [e.sender for e, _ in batch.events]
    await hs.get_event_creation_handler().handle_new_client_event(
        create_requester(joiners[0], authenticated_entity=hs.hostname),
        persisted,
        ratelimit=False,
        extra_users=[UserID.from_string(u) for u in joiners],
        ignore_shadow_ban=True,
    )


def _remember_state_groups(state_store: Any, batch: JoinBatch, groups: list[int]) -> None:
    """Put what is known of the batch's new state groups in Synapse's state group caches.
    Each group is stored as a one-event delta on the one before, and whoever asks next (the
    duplicate check and push rules for every event, the current-state update for the
    batch) would otherwise walk that chain back through the database. A state group never
    changes, so the entries cannot go stale.

    Every group gets its non-member state (a join changes none of it) and the two
    memberships asked about: its own joiner's and the next joiner's. Only the last group
    gets the whole member list, as the next batch and the current-state update read it
    whole: 100 full copies of a 5,000-member list per batch would flush the cache.
    """
    member = "m.room.member"
    state = batch.final_state
    others = {k: v for k, v in state.items() if k[0] != member}
    members_cache, others_cache = state_store._state_group_members_cache, state_store._state_group_cache
    seq_members, seq_others = members_cache.sequence, others_cache.sequence
    joiners = [(member, e.state_key) for e, _ in batch.events]
    for i, group in enumerate(groups):
        others_cache.update(seq_others, key=group, value=dict(others))
        if i == len(groups) - 1:
            members_cache.update(seq_members, key=group, value={k: v for k, v in state.items() if k[0] == member})
            continue
        # After event i: joiners up to i are in; the next joiner's membership is what it was.
        known = {joiners[i]: batch.events[i][0].event_id}
        upcoming, before = joiners[i + 1], batch.prior[i + 1]
        if before is not None:
            known[upcoming] = before
        members_cache.update(seq_members, key=group, value=known, fetched_keys={joiners[i], upcoming})


def dialect_of(api: Any) -> str:
    from synapse.storage.engines import PostgresEngine

    engine = hs_of(api).get_datastores().main.database_engine
    return "postgres" if isinstance(engine, PostgresEngine) else "sqlite"


def thumbnail_args(request: Any) -> tuple[int, int, str]:
    """width, height and method of a thumbnail request, validated as Synapse does."""
    from synapse.http.servlet import parse_integer, parse_string

    width = parse_integer(request, "width", required=True)
    height = parse_integer(request, "height", required=True)
    method = parse_string(request, "method", "scale", allowed_values=("scale", "crop"))
    return width, height, method


EVENT_RULES = ("synapse.module_api.callbacks.third_party_event_rules_callbacks", "ThirdPartyEventRulesModuleApiCallbacks")
# name -> (runs last, check); a check returns False to refuse without a reason or raises
# SynapseError (403 with its message) to refuse with one. ``_event_check_order`` is the
# same, refusing checks first, kept in order when a check is installed (not per event).
_event_checks: dict[str, tuple[bool, Callable[[Any], Awaitable[bool]]]] = {}
_event_check_order: list[tuple[str, Callable[[Any], Awaitable[bool]]]] = []


def install_event_check(name: str, check: Callable[[Any], Awaitable[bool]], records: bool = False) -> None:
    """Run ``check`` on every event before it is stored, like a ``check_event_allowed``
    module callback but without the room's state: as soon as one such callback is
    registered, Synapse loads the full state of the room for every event (5,000 member
    events for each message or join in a hospital-wide room) to hand it over. Our checks
    need the event alone. Synapse's own callback list still runs after ours (and is free
    when no other module registered one). Refusals fail closed: a check that breaks refuses.
    ``records``: the check writes a record of the event, so it runs after every check that
    may refuse it."""
    _event_checks[name] = (records, check)
    _event_check_order[:] = [(n, c) for n, (_, c) in sorted(_event_checks.items(), key=lambda item: item[1][0])]
    _wrap_once(EVENT_RULES, "check_event_allowed", _checking_events_first)


def _checking_events_first(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def check_event_allowed(self: Any, event: Any, context: Any) -> Any:
        from synapse.api.errors import SynapseError

        for check_name, check in _event_check_order:
            try:
                if not await check(event):
                    return False, None
            except SynapseError:
                raise
            except Exception:
                log.exception("event check %s failed on %s; refusing the event", check_name, event.event_id)
                return False, None
        return await original(self, event, context)

    return check_event_allowed


def _wrap_once(target: tuple[str, str], method: str, wrap: Callable[[Any], Any]) -> None:
    """Replace ``method`` of a Synapse class (module, class) by ``wrap(original)``, once per
    process; the wrapper reads module-level state, so later installs need no new wrapper."""
    import importlib

    module_name, class_name = target
    cls = getattr(importlib.import_module(module_name), class_name)
    original = getattr(cls, method)
    if getattr(original, _WRAPPED, False):
        return
    wrapped = wrap(original)
    setattr(wrapped, _WRAPPED, True)
    setattr(cls, method, wrapped)


LOGIN_SERVLET = ("synapse.rest.client.login", "LoginRestServlet")
_login_observer: Any = None


def install_login_observer(observer: Callable[[Any, dict, dict | None, BaseException | None], Awaitable[None]]) -> None:
    """Let ``observer`` see every /login: the submitted identifier (never the password is
    passed on), the result or the error. Synapse tells modules about successful logins only,
    without the device or the address; the audit trail needs failed attempts by user too."""
    global _login_observer
    _login_observer = observer
    _wrap_once(LOGIN_SERVLET, "on_POST", _observing_logins)


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
        await _login_observer(request, login_submission(request), result, error)
    except Exception:
        log.exception("login observer failed")


def login_submission(request: Any) -> dict:
    """The /login body without secrets (password, token)."""
    import json

    try:
        request.content.seek(0)
        body = json.loads(request.content.read() or b"{}")
    except (ValueError, OSError, AttributeError):
        return {}
    if not isinstance(body, dict):
        return {}
    return {k: v for k, v in body.items() if k not in ("password", "token")}
