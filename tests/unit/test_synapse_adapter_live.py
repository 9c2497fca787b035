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

from carematrix.audit import actions as A
from carematrix.audit.record import AuditRecord
from carematrix.rules import Verdict
from synapse_modules import access_log
from synapse_modules.adapter import homeserver as adapter_homeserver
from synapse_modules.adapter import tables
from synapse_modules.adapter.auth import install_login_observer, requester_user_id
from synapse_modules.adapter.errors import refusal_with_reason
from synapse_modules.adapter.events import censor_event, install_event_check
from synapse_modules.adapter.joins import MEMBER, build_joins, remember_state_groups, store_joins
from synapse_modules.adapter.media import (
    delete_local_media,
    install_media_gate,
    local_media_path,
    respond_error,
    set_media_security_headers,
    thumbnail_args,
)
from tests.synapse_inprocess import (
    APPSERVICE_SENDER,
    APPSERVICE_TOKEN,
    PASSWORD,
    Homeserver,
    PassThroughGate,
    allow_event,
    ignore_login,
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


def test_media_use_is_recorded_from_synapses_request_log_and_an_admin_acting_as_a_user_is_named(homeserver: Homeserver, people: People, audited: Collected):
    mxc = homeserver.upload(people.alice, png())
    audited.wait_for(lambda r: r.action == A.MEDIA_UPLOAD and r.actor == people.alice)
    puppet = homeserver.request("POST", f"/_synapse/admin/v1/users/{quote(people.carol)}/login", people.admin, {})
    assert puppet.status == 200
    path = f"/_matrix/client/v1/media/download/{mxc[len('mxc://'):]}"
    assert homeserver.request("GET", path, token=puppet.body["access_token"]).status == 200
    download = audited.wait_for(lambda r: r.action == A.MEDIA_DOWNLOAD and r.object == mxc)
    assert download.actor == people.admin  # logged as "admin|carol": the person at the keyboard


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
