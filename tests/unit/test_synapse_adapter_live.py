"""Guard tests of synapse_modules/adapter against a real homeserver: the installed Synapse,
started in this process on SQLite and on PostgreSQL (tests/synapse_inprocess.py), reached
over HTTP like a client. Each test fails if an upgrade changes what its adapter point
relies on; synapse_modules/adapter/__init__.py lists which test guards which point."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from twisted.web.http_headers import Headers

from carematrix.audit import actions as A
from carematrix.audit.access import Requester
from carematrix.audit.record import AuditRecord
from carematrix.rules import Verdict
from synapse_modules import access_log
from synapse_modules.adapter import homeserver as adapter_homeserver
from synapse_modules.adapter import tables
from synapse_modules.adapter.auth import (
    install_login_observer,
    requester_of,
    requester_user_id,
    stamped_requester,
)
from synapse_modules.adapter.errors import refusal_with_reason
from synapse_modules.adapter.events import censor_event, install_event_check
from synapse_modules.adapter.joins import MEMBER, build_joins, remember_state_groups, store_joins
from synapse_modules.adapter.media import (
    StoredUpload,
    delete_local_media,
    install_media_gate,
    install_upload_observer,
    local_media_path,
    respond_error,
    set_media_security_headers,
    thumbnail_args,
)
from synapse_modules.adapter.profile import install_display_name_guard
from tests.synapse_inprocess import (
    APPSERVICE_SENDER,
    APPSERVICE_TOKEN,
    PASSWORD,
    Homeserver,
    PassThroughGate,
    allow_event,
    allow_name,
    ignore_login,
    ignore_upload,
    on_reactor,
)


@dataclass
class People:
    admin: str
    alice: str
    bob: str
    carol: str


_people: dict[str, People] = {}


@pytest.fixture
def people(homeserver: Homeserver) -> People:
    if homeserver.name not in _people:
        _people[homeserver.name] = People(
            admin=homeserver.register("admin", admin=True),
            alice=homeserver.register("alice"),
            bob=homeserver.register("bob"),
            carol=homeserver.register("carol"),
        )
    return _people[homeserver.name]


@pytest.fixture
def api(homeserver: Homeserver) -> Any:
    return homeserver.module_api()


def png(size: int = 64) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def in_db(homeserver: Homeserver, api: Any, func: Callable[..., Any], *args: Any) -> Any:
    return homeserver.call(lambda: api.run_db_interaction("adapter_guard", func, *args))


def rows(homeserver: Homeserver, api: Any, query: str, *args: Any) -> list[tuple]:
    def run(txn: Any) -> list[tuple]:
        txn.execute(query, args)
        return txn.fetchall()

    return in_db(homeserver, api, run)


# -- homeserver.py -----------------------------------------------------------------------


def test_the_module_api_leads_to_the_homeserver_and_its_database_engine(homeserver: Homeserver, api: Any):
    assert adapter_homeserver.homeserver(api) is homeserver.hs
    assert adapter_homeserver.dialect_of(api) == homeserver.database


def test_a_process_has_seen_the_event_stream_up_to_its_last_stored_event(homeserver: Homeserver, people: People, api: Any):
    room = homeserver.create_room(people.alice, preset="private_chat")
    for body in ("first", "second"):
        event_id = homeserver.send(people.alice, room, {"msgtype": "m.text", "body": body}).body["event_id"]
        ((stored,),) = rows(homeserver, api, "SELECT stream_ordering FROM events WHERE event_id = ?", event_id)
        position = on_reactor(lambda: adapter_homeserver.events_position(api))
        assert position >= stored
        assert rows(homeserver, api, "SELECT COUNT(*) FROM events WHERE stream_ordering > ?", position) == [(0,)]


# -- media.py, auth.py (media requests) -----------------------------------------------------


class RecordingGate:
    """A media gate that records what it is told and serves the original, refuses, or
    answers with its own bytes, by media ID."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.seen: list[tuple] = []
        self.refuse: set[str] = set()
        self.private: set[str] = set()

    async def handle(self, request: Any, server_name: str | None, media_id: str, kind: str, auth: str, serve_original: Any) -> None:
        user = await requester_user_id(self.api, request, required=auth == "client")
        thumb = thumbnail_args(request) if kind == "thumbnail" else None
        self.seen.append((server_name, media_id, kind, auth, user, thumb))
        if media_id in self.refuse:
            respond_error(request, 403, "M_FORBIDDEN", "Not for you.", **{"org.carematrix.rule": "guard.media"})
        elif media_id in self.private:
            set_media_security_headers(request)
            request.setResponseCode(200)
            request.setHeader(b"Content-Type", b"text/plain")
            request.write(b"per-viewer bytes")
            request.finish()
        else:
            await serve_original()


@pytest.fixture
def gate(api: Any) -> Iterator[RecordingGate]:
    recording = RecordingGate(api)
    on_reactor(lambda: install_media_gate(recording))
    yield recording
    on_reactor(lambda: install_media_gate(PassThroughGate()))


def test_the_media_gate_sees_every_download_and_thumbnail_first(homeserver: Homeserver, people: People, gate: RecordingGate):
    image = png()
    server, media_id = homeserver.upload(people.alice, image)[len("mxc://"):].split("/")
    assert server == homeserver.name

    client = homeserver.request("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}", people.bob)
    assert client.status == 200 and client.raw == image
    thumb = homeserver.request(
        "GET", f"/_matrix/client/v1/media/thumbnail/{server}/{media_id}?width=32&height=24&method=crop", people.bob
    )
    assert thumb.status == 200 and thumb.headers["Content-Type"].startswith("image/")
    homeserver.request("GET", f"/_matrix/media/v3/download/{server}/{media_id}")
    homeserver.request("GET", f"/_matrix/media/v3/thumbnail/{server}/{media_id}?width=32&height=32")

    assert gate.seen == [
        (server, media_id, "download", "client", people.bob, None),
        (server, media_id, "thumbnail", "client", people.bob, (32, 24, "crop")),
        (server, media_id, "download", "legacy", None, None),
        (server, media_id, "thumbnail", "legacy", None, (32, 32, "scale")),
    ]


def test_an_application_service_token_downloads_as_its_sender_or_a_user_it_names(homeserver: Homeserver, people: People, gate: RecordingGate):
    server, media_id = homeserver.upload(people.alice, png())[len("mxc://"):].split("/")
    archive = homeserver.user_id("archive-1")

    async def register_archive_user() -> None:
        if not await homeserver.hs.get_datastores().main.get_user_by_id(archive):
            await homeserver.hs.get_registration_handler().appservice_register("archive-1", APPSERVICE_TOKEN)

    homeserver.call(register_archive_user)
    path = f"/_matrix/client/v1/media/download/{server}/{media_id}"
    assert homeserver.request("GET", path, token=APPSERVICE_TOKEN).status == 200
    assert homeserver.request("GET", f"{path}?user_id={quote(archive)}", token=APPSERVICE_TOKEN).status == 200
    assert [seen[4] for seen in gate.seen] == [homeserver.user_id(APPSERVICE_SENDER), archive]


def test_the_gate_answers_a_refusal_and_its_own_bytes_as_synapse_answers_media(homeserver: Homeserver, people: People, gate: RecordingGate):
    server, refused = homeserver.upload(people.alice, png())[len("mxc://"):].split("/")
    _, private = homeserver.upload(people.alice, png())[len("mxc://"):].split("/")
    gate.refuse.add(refused)
    gate.private.add(private)

    no = homeserver.request("GET", f"/_matrix/client/v1/media/download/{server}/{refused}", people.bob)
    assert no.status == 403
    assert no.body == {"errcode": "M_FORBIDDEN", "error": "Not for you.", "org.carematrix.rule": "guard.media"}
    assert no.headers["Access-Control-Allow-Origin"] == "*"

    mine = homeserver.request("GET", f"/_matrix/client/v1/media/download/{server}/{private}", people.bob)
    assert mine.status == 200 and mine.raw == b"per-viewer bytes"
    assert mine.headers["Access-Control-Allow-Origin"] == "*"
    assert mine.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert "sandbox" in mine.headers["Content-Security-Policy"]


def test_local_media_files_their_hash_and_their_deletion(homeserver: Homeserver, people: People, api: Any):
    image = png(48)
    server, media_id = homeserver.upload(people.alice, image)[len("mxc://"):].split("/")
    path = on_reactor(lambda: local_media_path(api, media_id))
    with open(path, "rb") as f:
        assert f.read() == image
    # a worker serving no media lays the same path out from the store's root
    hs = api._hs  # the same HomeServer the adapter reaches (adapter/homeserver.py)
    root = hs.config.media.media_store_path
    hs.config.media.can_load_media_repo = False
    try:
        assert on_reactor(lambda: local_media_path(api, media_id, root)) == path
        with pytest.raises(LookupError):
            on_reactor(lambda: local_media_path(api, media_id))
    finally:
        hs.config.media.can_load_media_repo = True
    assert in_db(homeserver, api, tables.media_sha256, [media_id, "nosuchmedia"]) == {media_id: hashlib.sha256(image).hexdigest()}

    assert homeserver.call(lambda: delete_local_media(api, [media_id])) == 1
    assert not os.path.exists(path)
    assert in_db(homeserver, api, tables.media_sha256, [media_id]) == {}
    gone = homeserver.request("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}", people.bob)
    assert gone.status == 404


# -- auth.py (logins) -----------------------------------------------------------------------


def test_the_login_observer_sees_every_login_without_the_password(homeserver: Homeserver, people: People):
    seen: list[tuple[dict, dict | None, Any]] = []

    async def observe(request: Any, submission: dict, result: dict | None, error: BaseException | None) -> None:
        seen.append((submission, result, error))

    on_reactor(lambda: install_login_observer(observe))
    try:
        login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "device_id": "PHONE"}
        wrong = homeserver.request("POST", "/_matrix/client/v3/login", body={**login, "password": "wrong"})
        right = homeserver.request("POST", "/_matrix/client/v3/login", body={**login, "password": PASSWORD})
    finally:
        on_reactor(lambda: install_login_observer(ignore_login))
    assert (wrong.status, right.status) == (403, 200)
    (failed_sub, failed_result, error), (ok_sub, ok_result, ok_error) = seen
    assert failed_sub == ok_sub == login  # as submitted, without the password
    assert failed_result is None and getattr(error, "code", None) == 403
    assert ok_error is None and ok_result["user_id"] == people.alice and ok_result["device_id"] == "PHONE"


def test_a_deactivated_account_stays_shut_although_an_auth_checker_accepts_it(homeserver: Homeserver, api: Any):
    """The LDAP sign-in module accepts a directory password; Synapse must still refuse an
    account org sync has deactivated (synapse_modules/ldap_auth.py relies on it)."""
    leaver = homeserver.register("leaver")

    async def directory_says_yes(username: str, login_type: str, login_dict: dict) -> tuple[str, None] | None:
        return (leaver, None) if login_dict.get("password") == "directory password" and "leaver" in username else None

    on_reactor(lambda: api.register_password_auth_provider_callbacks(
        auth_checkers={("m.login.password", ("password",)): directory_says_yes}
    ))
    login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "leaver"}, "password": "directory password"}
    assert homeserver.request("POST", "/_matrix/client/v3/login", body=login).status == 200

    async def deactivate() -> None:
        from synapse.types import create_requester

        await homeserver.hs.get_deactivate_account_handler().deactivate_account(
            leaver, erase_data=False, requester=create_requester(leaver)
        )

    homeserver.call(deactivate)
    refused = homeserver.request("POST", "/_matrix/client/v3/login", body=login)
    assert refused.status == 403 and refused.body["errcode"] == "M_USER_DEACTIVATED"


# -- events.py ------------------------------------------------------------------------------


def test_event_checks_run_on_every_event_before_it_is_stored(homeserver: Homeserver, people: People):
    from synapse.module_api.errors import SynapseError

    checked: list[tuple[str, str]] = []
    recorded: list[str] = []

    async def refuse_marked(event: Any) -> bool:
        checked.append((event.type, event.content.get("body", event.content.get("membership", ""))))
        if event.content.get("body") == "refuse with a reason":
            raise SynapseError(403, "The guard check refuses this.", "M_FORBIDDEN")
        return event.content.get("body") != "refuse quietly"

    async def record(event: Any) -> bool:
        recorded.append(event.content.get("body", ""))
        return True

    room = homeserver.create_room(people.alice, preset="public_chat")
    on_reactor(lambda: install_event_check("guard_records", record, records=True))
    on_reactor(lambda: install_event_check("guard_refuses", refuse_marked))
    try:
        assert homeserver.join(people.bob, room).status == 200
        ok = homeserver.send(people.bob, room, {"msgtype": "m.text", "body": "fine"})
        reason = homeserver.send(people.bob, room, {"msgtype": "m.text", "body": "refuse with a reason"})
        quiet = homeserver.send(people.bob, room, {"msgtype": "m.text", "body": "refuse quietly"})
    finally:
        on_reactor(lambda: install_event_check("guard_records", allow_event))
        on_reactor(lambda: install_event_check("guard_refuses", allow_event))
    assert ok.status == 200
    assert reason.status == 403 and reason.body["error"] == "The guard check refuses this."
    assert quiet.status == 403
    assert checked == [
        ("m.room.member", "join"),
        ("m.room.message", "fine"),
        ("m.room.message", "refuse with a reason"),
        ("m.room.message", "refuse quietly"),
    ]
    assert recorded == ["", "fine"]  # a recording check runs after every check that may refuse


def test_censoring_replaces_the_stored_json_and_drops_the_search_row(homeserver: Homeserver, people: People, api: Any):
    room = homeserver.create_room(people.alice, preset="private_chat")
    sent = homeserver.send(people.alice, room, {"msgtype": "m.text", "body": "patient bed twelve"})
    event_id = sent.body["event_id"]
    assert rows(homeserver, api, "SELECT event_id FROM event_search WHERE event_id = ?", event_id) == [(event_id,)]

    homeserver.call(lambda: censor_event(api, event_id))

    (stored,) = rows(homeserver, api, "SELECT json FROM event_json WHERE event_id = ?", event_id)
    assert "patient bed twelve" not in stored[0]
    assert rows(homeserver, api, "SELECT event_id FROM event_search WHERE event_id = ?", event_id) == []
    fetched = homeserver.request("GET", f"/_matrix/client/v3/rooms/{quote(room)}/event/{quote(event_id)}", people.alice)
    assert fetched.status == 200 and fetched.body["content"] == {}


def test_read_receipts_and_edits_as_stored(homeserver: Homeserver, people: People, api: Any):
    room = homeserver.create_room(people.alice, preset="public_chat")
    for user in (people.bob, people.carol):
        assert homeserver.join(user, room).status == 200
    first = homeserver.send(people.alice, room, {"msgtype": "m.text", "body": "first"}).body["event_id"]
    second = homeserver.send(people.alice, room, {"msgtype": "m.text", "body": "second"}).body["event_id"]
    assert in_db(homeserver, api, tables.readers_since, room, first) == set()

    def receipt(user: str, kind: str, event_id: str) -> None:
        path = f"/_matrix/client/v3/rooms/{quote(room)}/receipt/{kind}/{quote(event_id)}"
        assert homeserver.request("POST", path, user, {}).status == 200

    receipt(people.bob, "m.read", first)
    receipt(people.carol, "m.read.private", second)
    assert in_db(homeserver, api, tables.readers_since, room, first) == {people.bob, people.carol}
    assert in_db(homeserver, api, tables.readers_since, room, second) == {people.carol}
    assert in_db(homeserver, api, tables.readers_since, room, "$not-stored") is None

    edit = homeserver.send(people.alice, room, {
        "msgtype": "m.text", "body": "* first (edited)",
        "m.new_content": {"msgtype": "m.text", "body": "first (edited)"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": first},
    }).body["event_id"]
    homeserver.send(people.alice, room, {"msgtype": "m.text", "body": "> first", "m.relates_to": {"m.in_reply_to": {"event_id": first}}})
    assert in_db(homeserver, api, tables.edits_of, first) == [edit]
    assert in_db(homeserver, api, tables.edits_of, second) == []
    # A transcript refers to its voice message (a reply and an m.reference): found with its sender.
    reference = homeserver.send(people.bob, room, {
        "msgtype": "m.notice", "body": "words",
        "m.relates_to": {"rel_type": "m.reference", "event_id": first, "m.in_reply_to": {"event_id": first}},
    }).body["event_id"]
    assert in_db(homeserver, api, tables.references_to, first) == [(reference, people.bob)]
    assert in_db(homeserver, api, tables.references_to, second) == []


# -- joins.py -------------------------------------------------------------------------------


def test_a_batch_of_joins_is_stored_and_its_cached_state_is_the_stored_state(homeserver: Homeserver, people: People, api: Any):
    """The state group caches are filled by hand for a batch's new groups: a wrong entry
    would make Synapse see the wrong room state, so each entry must be exactly what Synapse
    reads from the database for that group."""
    from synapse.types.state import StateFilter

    room = homeserver.create_room(people.alice, preset="public_chat", name="Ward 7 (guard)")
    users = [homeserver.register(f"batch{i}-{homeserver.database}-{time.monotonic_ns()}") for i in range(3)]
    # The second joined and left before: its membership before the batch is that leave.
    assert homeserver.join(users[1], room).status == 200
    assert homeserver.request("POST", f"/_matrix/client/v3/rooms/{quote(room)}/leave", users[1], {}).status == 200

    batch = homeserver.call(lambda: build_joins(api, room, [(u, {"displayname": u[1:8]}) for u in users]))
    assert batch.prior[0] is None and batch.prior[1] is not None and batch.prior[2] is None
    groups = homeserver.call(lambda: store_joins(api, batch))
    assert len(groups) == len(users)

    state = homeserver.call(lambda: api.get_room_state(room, [(MEMBER, u) for u in users]))
    assert all(state[(MEMBER, u)].content["membership"] == "join" for u in users)
    assert [state[(MEMBER, u)].event_id for u in users] == [e.event_id for e, _ in batch.events]

    state_store = homeserver.hs.get_datastores().state
    members_cache, others_cache = state_store._state_group_members_cache, state_store._state_group_cache

    def ours_alone() -> tuple[dict[int, tuple[Any, Any]], Any]:
        members_cache.invalidate_all()
        others_cache.invalidate_all()
        remember_state_groups(state_store, batch, groups)
        asked = [(MEMBER, u) for u in users]
        return {g: (others_cache.get(g), members_cache.get(g, asked)) for g in groups}, members_cache.get(groups[-1])

    cached, last_members = on_reactor(ours_alone)
    on_reactor(lambda: (members_cache.invalidate_all(), others_cache.invalidate_all()))
    stored = homeserver.call(lambda: state_store._get_state_groups_from_groups(groups, StateFilter.all()))

    for i, group in enumerate(groups):
        others, members = cached[group]
        truth = stored[group]
        assert others.full and others.value == {k: v for k, v in truth.items() if k[0] != MEMBER}
        # Every membership the cache answers for, present or known absent, is the stored one.
        assert members.value, f"nothing cached for group {group}"
        for key, event_id in members.value.items():
            assert truth.get(key) == event_id, (i, key)
        for key in members.known_absent:
            assert key not in truth, (i, key)
    # The last group holds the whole member list, as the next batch reads it.
    assert last_members.full
    assert last_members.value == {k: v for k, v in stored[groups[-1]].items() if k[0] == MEMBER}


# -- errors.py ------------------------------------------------------------------------------


def test_a_refused_join_tells_the_client_our_reason(homeserver: Homeserver, people: People, api: Any):
    room = homeserver.create_room(people.alice, preset="public_chat")
    verdict = Verdict(False, "guard.join", "Only the guard's staff may join this room.")

    async def user_may_join_room(user_id: str, room_id: str, is_invited: bool) -> Any:
        return refusal_with_reason(verdict) if room_id == room else "NOT_SPAM"

    on_reactor(lambda: api.register_spam_checker_callbacks(user_may_join_room=user_may_join_room))
    refused = homeserver.join(people.bob, room)
    assert refused.status == 403
    assert refused.body == {
        "errcode": "M_FORBIDDEN",
        "error": "Only the guard's staff may join this room. [rule guard.join]",
        "org.carematrix.rule": "guard.join",
    }


# -- logging_context.py ---------------------------------------------------------------------


def test_resumed_callers_run_in_their_own_logging_context_and_the_waker_keeps_its_own():
    from synapse.logging.context import (
        LoggingContext,
        current_context,
        make_deferred_yieldable,
        run_in_background,
    )
    from twisted.internet import defer

    from synapse_modules.adapter.logging_context import resume

    waiting: defer.Deferred = defer.Deferred()
    resumed_in: list[Any] = []

    async def wait() -> None:
        await make_deferred_yieldable(waiting)
        resumed_in.append(current_context())

    caller = LoggingContext(name="caller", server_name="guard.test")
    waker = LoggingContext(name="waker", server_name="guard.test")
    with caller:
        run_in_background(wait)
    with waker:
        resume([waiting])
        assert current_context() is waker
    assert resumed_in == [caller]


# -- access_log.py ----------------------------------------------------------------------------


class Collected:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []
        self._changed = threading.Condition()

    def __call__(self, record: AuditRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def wait_for(self, match: Callable[[AuditRecord], bool]) -> AuditRecord:
        """The request log line is written as the request finishes, which can be just after
        the client has its answer."""
        with self._changed:
            self._changed.wait_for(lambda: any(match(r) for r in self.records), timeout=10)
            found = [r for r in self.records if match(r)]
        assert found, f"no such audit record among {self.records}"
        return found[0]


@pytest.fixture
def audited() -> Iterator[Collected]:
    collected = Collected()
    logger = logging.getLogger(access_log.ACCESS_LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)  # as the deployment's log config has it
    handler = access_log.install(collected, "main")
    yield collected
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_admin_api_use_is_recorded_from_synapses_request_log(homeserver: Homeserver, people: People, audited: Collected):
    user_path = f"/_synapse/admin/v2/users/{quote(people.bob)}"
    assert homeserver.request("GET", user_path, people.admin).status == 200
    assert homeserver.request("GET", user_path, people.alice).status == 403
    assert homeserver.request("GET", "/_synapse/admin/v1/server_version").status == 200

    def admin_record(actor: str) -> Callable[[AuditRecord], bool]:
        return lambda r: r.action == A.ADMIN_API and r.actor == actor

    by_admin = audited.wait_for(admin_record(people.admin))
    assert by_admin.object == f"GET /_synapse/admin/v2/users/{quote(people.bob)}"  # the path as requested
    assert (by_admin.outcome, by_admin.source, by_admin.details) == (A.SUCCESS, "127.0.0.1", {"status": "200"})
    assert audited.wait_for(admin_record(people.alice)).outcome == A.DENIED
    assert audited.wait_for(admin_record("anonymous")).object == "GET /_synapse/admin/v1/server_version"


def test_file_requests_are_left_to_their_own_records_not_the_request_log(homeserver: Homeserver, people: People, audited: Collected):
    mxc = homeserver.upload(people.alice, png())
    assert homeserver.request("GET", f"/_matrix/client/v1/media/download/{mxc[len('mxc://'):]}", people.bob).status == 200
    assert homeserver.request("GET", "/_synapse/admin/v1/server_version").status == 200
    audited.wait_for(lambda r: r.action == A.ADMIN_API)  # the line of a later request was read
    assert [r for r in audited.records if r.action.startswith("media.")] == []


# -- media.py, auth.py (who asked, once Synapse has answered; uploads) -------------------------


class AfterGate:
    """A media gate that lets Synapse answer and notes who Synapse found had asked."""

    def __init__(self) -> None:
        self.found: list[Any] = []

    async def handle(self, request: Any, server_name: str | None, media_id: str, kind: str, auth: str, serve_original: Any) -> None:
        try:
            await serve_original()
        finally:
            self.found.append(stamped_requester(request))


def test_who_synapse_found_is_read_after_it_answers_and_an_admin_acting_as_a_user_is_named(homeserver: Homeserver, people: People, api: Any):
    after = AfterGate()
    on_reactor(lambda: install_media_gate(after))
    try:
        mxc = homeserver.upload(people.alice, png())
        path = f"/_matrix/client/v1/media/download/{mxc[len('mxc://'):]}"
        puppet = homeserver.request("POST", f"/_synapse/admin/v1/users/{quote(people.carol)}/login", people.admin, {})
        assert puppet.status == 200
        assert homeserver.request("GET", path, people.bob).status == 200
        assert homeserver.request("GET", path, token=puppet.body["access_token"]).status == 200
        assert homeserver.request("GET", path).status == 401
    finally:
        on_reactor(lambda: install_media_gate(PassThroughGate()))
    assert after.found == [Requester(people.bob), Requester(people.carol, people.admin), None]

    class Probe:
        def __init__(self, token: str) -> None:
            self.requestHeaders = Headers({b"Authorization": [f"Bearer {token}".encode()]})
            self.args: dict[bytes, list[bytes]] = {}

    puppeted = homeserver.call(lambda: requester_of(api, Probe(puppet.body["access_token"]), required=True))
    assert puppeted == Requester(people.carol, people.admin)


def test_the_upload_observer_sees_every_upload_and_the_file_it_stored(homeserver: Homeserver, people: People):
    seen: list[tuple[Any, StoredUpload]] = []

    async def observe(request: Any, stored: StoredUpload) -> None:
        seen.append((request, stored))

    on_reactor(lambda: install_upload_observer(observe))
    try:
        data = png(40)
        mxc = homeserver.upload(people.alice, data)
        assert seen[-1][1] == StoredUpload(mxc, len(data), "image/png")
        assert stamped_requester(seen[-1][0]) == Requester(people.alice)

        refused = homeserver.request("POST", "/_matrix/media/v3/upload", None, b"x", content_type="text/plain")
        assert refused.status == 401
        assert seen[-1][1].mxc is None and seen[-1][1].error and "token" in seen[-1][1].error.lower()

        created = homeserver.request("POST", "/_matrix/media/v1/create", people.alice, {})
        assert created.status == 200
        later = created.body["content_uri"]
        put = homeserver.request(
            "PUT", f"/_matrix/media/v3/upload/{later[len('mxc://'):]}", people.alice, b"%PDF-1.4", content_type="application/pdf"
        )
        assert put.status == 200
        assert seen[-1][1] == StoredUpload(later, 8, "application/pdf")
    finally:
        on_reactor(lambda: install_upload_observer(ignore_upload))


# -- profile.py --------------------------------------------------------------------------------


def test_a_users_own_display_name_change_is_put_to_the_guard_first(homeserver: Homeserver, people: People):
    asked: list[tuple[str, Any]] = []
    verdict = Verdict(False, "guard.name", "名字不能改。 Names stay.")

    async def guard(user_id: str, name: Any) -> Verdict:
        asked.append((user_id, name))
        return verdict if name == "Night Owl" else Verdict(True)

    on_reactor(lambda: install_display_name_guard(guard))
    try:
        path = f"/_matrix/client/v3/profile/{quote(people.bob)}/displayname"
        refused = homeserver.request("PUT", path, people.bob, {"displayname": "Night Owl"})
        assert refused.status == 403
        assert refused.body == {"errcode": "M_FORBIDDEN", "error": verdict.message(), "org.carematrix.rule": "guard.name"}
        assert homeserver.request("PUT", path, people.bob, {"displayname": "Bob B"}).status == 200
        # An admin's change (org sync's) is not the person's own.
        assert homeserver.request("PUT", path, people.admin, {"displayname": "Night Owl"}).status == 200
    finally:
        on_reactor(lambda: install_display_name_guard(allow_name))
    assert asked == [(people.bob, "Night Owl"), (people.bob, "Bob B")]


# -- tables.py (retention) --------------------------------------------------------------------


def test_the_retention_report_reads_lifetimes_and_message_ages(homeserver: Homeserver, people: People, api: Any):
    from synapse_modules.retention import retention_report

    day = 86_400_000
    room = homeserver.create_room(
        people.alice, preset="private_chat", name="Retention guard",
        initial_state=[{"type": "m.room.retention", "state_key": "", "content": {"max_lifetime": day}}],
    )
    for body in ("one", "two"):
        assert homeserver.send(people.alice, room, {"msgtype": "m.text", "body": body}).status == 200
    now = int(time.time() * 1000)

    # Inside the homeserver (a Synapse transaction) and on a bare connection, as the CLI reads
    # it. The room's name comes from room statistics, which Synapse updates soon after.
    def report_on(read: Callable[[], list[Any]]) -> Any:
        deadline = time.monotonic() + 10
        while True:
            (row,) = [r for r in read() if r.room_id == room]
            if row.name is not None or time.monotonic() > deadline:
                return row
            time.sleep(0.05)

    def from_cli() -> list[Any]:
        with bare_connection(homeserver) as cur:
            return retention_report(cur, homeserver.database, now + 60_000, day)

    in_synapse = report_on(lambda: in_db(homeserver, api, retention_report, homeserver.database, now + day + 60_000, day))
    for row, past, soon in ((in_synapse, 2, 0), (report_on(from_cli), 0, 2)):
        assert (row.name, row.max_lifetime_ms, row.due_now, row.due_soon) == ("Retention guard", day, past, soon)
        assert row.oldest_ts is not None and now - 60_000 < row.oldest_ts <= now


class bare_connection:  # noqa: N801 - a context manager used like a function
    """A DB-API cursor on the homeserver database outside Synapse."""

    def __init__(self, homeserver: Homeserver) -> None:
        self._hs = homeserver

    def __enter__(self) -> Any:
        args = self._hs.hs.config.database.databases[0].config["args"]
        if self._hs.database == "sqlite":
            import sqlite3

            self._conn = sqlite3.connect(args["database"])
        else:
            import psycopg2

            self._conn = psycopg2.connect(**{k: v for k, v in args.items() if not k.startswith("cp_")})
        return self._conn.cursor()

    def __exit__(self, *exc: object) -> None:
        self._conn.close()


# -- behaviour relied on: SSO -----------------------------------------------------------------


def test_every_oidc_sign_in_asks_the_mapping_provider_for_extra_attributes(homeserver: Homeserver, people: People):
    """Also for an IdP subject Synapse has already linked to an account, when it skips the
    mapping: synapse_modules/sso_mapping.py refuses leavers there."""
    from synapse_modules.adapter.sso import MappingException
    from tests.synapse_inprocess import OIDC_IDP, ProbeMapping

    provider = homeserver.hs.get_oidc_handler()._providers[f"oidc-{OIDC_IDP}"]
    homeserver.call(lambda: homeserver.hs.get_datastores().main.record_user_external_id(
        f"oidc-{OIDC_IDP}", "subject-of-bob", people.bob
    ))
    asked: list[str] = []

    def extra(userinfo: Any) -> dict:
        asked.append(userinfo["sub"])
        raise MappingException("Staff number 42 is not on this hospital's staff list")

    def not_for_a_linked_subject(userinfo: Any) -> dict:
        raise AssertionError("the mapping is skipped for a linked subject")

    ProbeMapping.answers = {"get_extra_attributes": extra, "map_user_attributes": not_for_a_linked_subject}
    with pytest.raises(MappingException, match="not on this hospital's staff list"):
        # Refused before Synapse answers the browser: no request is needed.
        homeserver.call(lambda: provider._complete_oidc_login({"sub": "subject-of-bob"}, {}, None, "https://client.invalid/", None))
    assert asked == ["subject-of-bob"]


# -- search.py ------------------------------------------------------------------------------

ROLE_NAME = "心内科 主班医生 Cardiology attending"


def directory_search(homeserver: Homeserver, user: str, term: str) -> set[str]:
    resp = homeserver.request("POST", "/_matrix/client/v3/user_directory/search", user, {"search_term": term, "limit": 50})
    assert resp.status == 200, resp.body
    return {r["user_id"] for r in resp.body["results"]}


def message_search(homeserver: Homeserver, user: str, term: str) -> tuple[set[str], set[str]]:
    resp = homeserver.request("POST", "/_matrix/client/v3/search", user, {"search_categories": {"room_events": {"search_term": term}}})
    assert resp.status == 200, resp.body
    found = resp.body["search_categories"]["room_events"]
    return {r["result"]["event_id"] for r in found["results"]}, set(found.get("highlights", []))


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    """The user directory is updated by Synapse in the background, after the request."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the user directory did not catch up"
        time.sleep(0.2)


@pytest.fixture
def chinese_staff(homeserver: Homeserver, people: People) -> dict[str, str]:
    """Three people with Chinese display names, sharing a public room with alice."""
    key = f"{homeserver.name}-staff"
    if key not in _people:
        room = homeserver.create_room(people.alice, preset="public_chat")
        staff = {}
        for localpart, name in (("role-cardio-attending", ROLE_NAME), ("liuyang", "刘洋"), ("liwei", "重症医学科 李伟")):
            user = homeserver.register(localpart)
            path = f"/_matrix/client/v3/profile/{quote(user)}/displayname"
            assert homeserver.request("PUT", path, user, {"displayname": name}).status == 200
            assert homeserver.join(user, room).status == 200
            staff[name] = user
        _people[key] = staff  # type: ignore[assignment]
    return _people[key]  # type: ignore[return-value]


def test_chinese_display_names_are_indexed_and_searched_alike_in_the_user_directory(
    homeserver: Homeserver, people: People, chinese_staff: dict[str, str]
):
    role, liu, li = chinese_staff[ROLE_NAME], chinese_staff["刘洋"], chinese_staff["重症医学科 李伟"]
    eventually(lambda: li in directory_search(homeserver, people.alice, "李伟"))
    for term, who in (
        ("心内科", role), ("主班医生", role), ("医生", role), ("心", role), ("Cardiology", role),
        ("刘洋", liu), ("重症医学科", li), ("李伟", li), ("liuyang", liu),
    ):
        assert who in directory_search(homeserver, people.alice, term), term
    assert directory_search(homeserver, people.alice, "心内科") & {liu, li} == set()
    assert role not in directory_search(homeserver, people.alice, "重症医学科")


def test_chinese_names_are_found_by_pinyin_and_initials_in_the_user_directory(homeserver: Homeserver, people: People):
    """As a Chinese input method user types them: lm, lvmeng, "lv meng"; a Chinese query is
    still searched by its characters only (李 does not find 黎明, li ming)."""
    room = homeserver.create_room(people.alice, preset="public_chat")
    staff = {}
    for localpart, name in (("staff-py-1", "吕蒙 · 重症医学科"), ("staff-py-2", "黎明"), ("staff-py-3", "单雄信")):
        user = homeserver.register(localpart)
        path = f"/_matrix/client/v3/profile/{quote(user)}/displayname"
        assert homeserver.request("PUT", path, user, {"displayname": name}).status == 200
        assert homeserver.join(user, room).status == 200
        staff[name] = user
    lv, li, shan = staff["吕蒙 · 重症医学科"], staff["黎明"], staff["单雄信"]
    eventually(lambda: shan in directory_search(homeserver, people.alice, "单雄信"))
    for term, who in (("lm", lv), ("lvmeng", lv), ("lv meng", lv), ("zzyxk", lv), ("liming", li),
                      ("sxx", shan), ("shanxiongxin", shan), ("danxiongxin", shan)):
        assert who in directory_search(homeserver, people.alice, term), term
    assert directory_search(homeserver, people.alice, "lm") & {lv, li, shan} == {lv, li}  # initials are shared
    assert directory_search(homeserver, people.alice, "lvm") & {lv, li, shan} == {lv}
    assert li not in directory_search(homeserver, people.alice, "李")


def test_chinese_words_in_messages_are_indexed_and_searched_alike(homeserver: Homeserver, people: People):
    room = homeserver.create_room(people.alice, preset="private_chat")
    chinese = homeserver.send(people.alice, room, {"msgtype": "m.text", "body": "患者王建国血钾7.2"}).body["event_id"]
    english = homeserver.send(people.alice, room, {"msgtype": "m.text", "body": "potassium critical for bed twelve"}).body["event_id"]
    other = homeserver.send(people.alice, room, {"msgtype": "m.text", "body": "王国建议复查"}).body["event_id"]
    found, highlights = message_search(homeserver, people.alice, "王建国")
    assert chinese in found and other not in found and "王建国" in highlights
    assert chinese in message_search(homeserver, people.alice, "血钾")[0]
    assert message_search(homeserver, people.alice, "potassium")[0] >= {english}
    assert chinese not in message_search(homeserver, people.alice, "potassium")[0]
    assert message_search(homeserver, people.alice, "王建国 -potassium")[0] >= {chinese}


def test_a_quoted_phrase_of_latin_and_chinese_finds_the_note_written_so(homeserver: Homeserver, people: People):
    """A phrase copied from a note ("CT示右肺", "王建国CT", "ECG示ST段抬高") finds that note
    and not one with the same words apart."""
    room = homeserver.create_room(people.alice, preset="private_chat")
    ct = homeserver.send(people.alice, room, {"msgtype": "m.text", "body": "患者王建国CT示右肺结节8mm"}).body["event_id"]
    ecg = homeserver.send(people.alice, room, {"msgtype": "m.text", "body": "12床的ECG示ST段抬高，已通知"}).body["event_id"]
    apart = homeserver.send(people.alice, room, {"msgtype": "m.text", "body": "右肺 CT 已约，王建国明天"}).body["event_id"]
    assert message_search(homeserver, people.alice, '"CT示右肺"')[0] == {ct}
    assert message_search(homeserver, people.alice, '"王建国CT"')[0] == {ct}
    assert message_search(homeserver, people.alice, '"王建国CT示右肺结节"')[0] == {ct}
    assert message_search(homeserver, people.alice, '"ECG示ST段抬高"')[0] == {ecg}
    assert message_search(homeserver, people.alice, "王建国 CT")[0] == {ct, apart}
    found, highlights = message_search(homeserver, people.alice, '"CT示右肺"')
    assert "示" not in highlights and "右" not in highlights


def _index_as_before(
    dialect: str, user_id: str, event_id: str, form_1: str, form_2: str, form_3: str,
) -> Callable[[Any], None]:
    """Rewrite a directory row and a message row as Synapse indexed them without us, the
    message ``form_1`` ("患者王建国CT示") as our first index form did (its Chinese only),
    ``form_2`` ("血钾7.2mmol/L") as the second did (no unit parts) and ``form_3`` ("Bed 3
    K7.2 Na128") as the third did (nothing added)."""

    def run(txn: Any) -> None:
        for earlier, event in (
            ("患者王建国CT示\n患 者 王 建 国 患者 者王 王建 建国 示", form_1),
            ("血钾7.2mmol/L\n血 钾 血钾 7.2mmol/L", form_2),
            ("Bed 3 K7.2 Na128", form_3),
        ):
            if dialect == "sqlite":
                txn.execute("UPDATE event_search SET value = ? WHERE event_id = ?", (earlier, event))
            else:
                txn.execute("UPDATE event_search SET vector = to_tsvector('english', ?) WHERE event_id = ?", (earlier, event))
        if dialect == "sqlite":
            txn.execute("UPDATE user_directory_search SET value = (SELECT d.user_id || ' ' || lower(d.display_name) "
                        "FROM user_directory AS d WHERE d.user_id = ?) WHERE user_id = ?", (user_id, user_id))
            txn.execute("SELECT rowid, value FROM event_search WHERE event_id = ?", (event_id,))
            rowid, value = txn.fetchone()
            txn.execute("UPDATE event_search SET value = ? WHERE rowid = ?", (value.split("\n")[0], rowid))
        else:
            txn.execute("UPDATE user_directory_search SET vector = (SELECT to_tsvector('simple', lower(d.display_name)) "
                        "FROM user_directory AS d WHERE d.user_id = ?) WHERE user_id = ?", (user_id, user_id))
            txn.execute("UPDATE event_search SET vector = to_tsvector('english', '患者王建国血钾7.2 second') WHERE event_id = ?",
                        (event_id,))
        txn.execute("DELETE FROM carematrix_search_form")

    return run


def test_rows_indexed_before_are_reindexed_once_at_start(
    homeserver: Homeserver, people: People, chinese_staff: dict[str, str], api: Any
):
    from synapse_modules import hs_schema
    from synapse_modules.adapter.search import reindex_if_needed

    li = chinese_staff["重症医学科 李伟"]
    eventually(lambda: li in directory_search(homeserver, people.alice, "重症医学科"))
    room = homeserver.create_room(people.alice, preset="private_chat")
    event_id = homeserver.send(people.alice, room, {"msgtype": "m.text", "body": "患者王建国血钾7.2 second"}).body["event_id"]
    form_1 = homeserver.send(people.alice, room, {"msgtype": "m.text", "body": "患者王建国CT示"}).body["event_id"]
    form_2 = homeserver.send(people.alice, room, {"msgtype": "m.text", "body": "血钾7.2mmol/L"}).body["event_id"]
    form_3 = homeserver.send(people.alice, room, {"msgtype": "m.text", "body": "Bed 3 K7.2 Na128"}).body["event_id"]
    homeserver.call(lambda: hs_schema.gate(api).ready())
    in_db(homeserver, api, _index_as_before(adapter_homeserver.dialect_of(api), li, event_id, form_1, form_2, form_3))
    assert li not in directory_search(homeserver, people.alice, "重症医学科")
    assert li not in directory_search(homeserver, people.alice, "zzyxk")
    assert event_id not in message_search(homeserver, people.alice, "王建国")[0]
    assert form_1 not in message_search(homeserver, people.alice, "CT")[0]
    assert form_2 not in message_search(homeserver, people.alice, "mmol")[0]
    assert form_3 not in message_search(homeserver, people.alice, "128")[0]

    homeserver.call(lambda: reindex_if_needed(api, hs_schema.gate(api).ready))

    assert li in directory_search(homeserver, people.alice, "重症医学科")
    assert li in directory_search(homeserver, people.alice, "zzyxk")  # its pinyin initials
    assert event_id in message_search(homeserver, people.alice, "王建国")[0]
    assert message_search(homeserver, people.alice, "second")[0] >= {event_id}
    assert form_1 in message_search(homeserver, people.alice, "CT")[0]
    assert form_1 in message_search(homeserver, people.alice, "王建国")[0]
    assert form_2 in message_search(homeserver, people.alice, "mmol")[0]
    assert form_2 in message_search(homeserver, people.alice, "7.2")[0]
    assert form_3 in message_search(homeserver, people.alice, "128")[0]
    assert form_3 in message_search(homeserver, people.alice, "7.2")[0]
    forms = rows(homeserver, api, "SELECT index_name, form FROM carematrix_search_form ORDER BY index_name")
    assert forms == [("event_search", "cjk-bigram-4"), ("user_directory", "cjk-bigram-4")]
