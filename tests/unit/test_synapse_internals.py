"""Guards what synapse_modules/internals.py borrows from Synapse: an upgrade that moves a
media servlet, a storage method or a table column fails here, not in a hospital."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import synapse

from synapse_modules import internals

SCHEMA_DIR = Path(synapse.__file__).parent / "storage" / "schema"


def test_every_media_servlet_still_has_the_on_get_we_wrap():
    for module_name, class_name, _kind, auth in internals.MEDIA_SERVLETS:
        cls = getattr(importlib.import_module(module_name), class_name)
        params = list(inspect.signature(cls.on_GET).parameters)
        if auth == "federation":
            assert params[:5] == ["self", "origin", "content", "request", "media_id"], (class_name, params)
        else:
            assert params[:4] == ["self", "request", "server_name", "media_id"], (class_name, params)


def test_no_other_servlet_serves_media_bytes():
    """A new download path in Synapse would bypass the gate: every servlet whose pattern
    downloads or thumbnails media must be one we wrap."""
    wrapped = {(m, c) for m, c, _, _ in internals.MEDIA_SERVLETS}
    for module_name in ("synapse.rest.client.media", "synapse.rest.media.download_resource",
                        "synapse.rest.media.thumbnail_resource", "synapse.federation.transport.server.federation"):
        module = importlib.import_module(module_name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module_name:
                continue
            patterns = " ".join(getattr(p, "pattern", str(p)) for p in getattr(cls, "PATTERNS", [])) + str(getattr(cls, "PATH", ""))
            if re.search(r"/(download|thumbnail)/", patterns):
                assert (module_name, name) in wrapped, f"{module_name}.{name} serves media outside the gate"


def test_storage_and_media_methods_exist():
    from synapse.api.auth.base import BaseAuth
    from synapse.media.filepath import MediaFilePaths
    from synapse.media.media_repository import MediaRepository
    from synapse.storage.databases.main.censor_events import CensorEventsStore

    assert hasattr(BaseAuth, "has_access_token")
    assert hasattr(BaseAuth, "get_access_token_from_request")
    from synapse.api.auth.internal import InternalAuth

    assert "token" in inspect.signature(InternalAuth.get_user_by_access_token).parameters
    # Application-service tokens on media requests (the case archive's downloads).
    assert list(inspect.signature(BaseAuth.get_appservice_user).parameters) == ["self", "request", "access_token"]
    assert hasattr(MediaFilePaths, "local_media_filepath")
    assert "media_ids" in inspect.signature(MediaRepository.delete_local_media_ids).parameters
    assert list(inspect.signature(CensorEventsStore.expire_event).parameters) == ["self", "event_id"]


def test_tables_and_columns_we_query_exist():
    text = "\n".join(p.read_text() for p in SCHEMA_DIR.rglob("*.sql*"))
    for needle in (
        "receipts_linearized", "receipt_type", "event_relations", "relates_to_id", "event_search",
        "event_json", "local_media_repository", "stream_ordering",
    ):
        assert needle in text, needle
    assert re.search(r"ALTER TABLE local_media_repository ADD COLUMN sha256", text, re.I), "sha256 column"


def test_login_servlet_still_has_the_on_post_we_observe():
    module_name, class_name = internals.LOGIN_SERVLET
    cls = getattr(importlib.import_module(module_name), class_name)
    assert list(inspect.signature(cls.on_POST).parameters)[:2] == ["self", "request"]


def test_login_submission_never_carries_the_password():
    import io

    class Req:
        content = io.BytesIO(b'{"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "n3001"}, "password": "secret"}')

    sub = internals.login_submission(Req())
    assert "password" not in sub and sub["identifier"]["user"] == "n3001"


def test_login_identity_qualifies_localparts():
    from synapse_modules.audit_module import login_identity

    assert login_identity({"identifier": {"type": "m.id.user", "user": "N3001"}}, "renhe.example") == "@n3001:renhe.example"
    assert login_identity({"user": "@d1001:renhe.example"}, "renhe.example") == "@d1001:renhe.example"
    assert login_identity({"identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "a@b.cn"}}, "x") == "a@b.cn"
    assert login_identity({}, "x") is None


def test_event_rules_hook_still_takes_event_and_context():
    module_name, class_name = internals.EVENT_RULES
    cls = getattr(importlib.import_module(module_name), class_name)
    assert list(inspect.signature(cls.check_event_allowed).parameters)[:3] == ["self", "event", "context"]


def test_batch_join_building_blocks_exist():
    from synapse.events.snapshot import UnpersistedEventContext
    from synapse.handlers.message import EventCreationHandler
    from synapse.storage.databases.main.events_forward_extremities import (
        EventForwardExtremitiesStore,
    )

    create = inspect.signature(EventCreationHandler.create_event).parameters
    assert {"prev_event_ids", "depth", "state_map", "for_batch", "require_consent"} <= set(create)
    handle = inspect.signature(EventCreationHandler.handle_new_client_event).parameters
    assert {"events_and_context", "ratelimit", "extra_users", "ignore_shadow_ban"} <= set(handle)
    assert list(inspect.signature(UnpersistedEventContext.batch_persist_unpersisted_contexts).parameters) == [
        "events_and_context", "room_id", "last_known_state_group", "datastore",
    ]
    assert hasattr(EventForwardExtremitiesStore, "get_forward_extremities_for_room")


class _RecordingCache:
    def __init__(self) -> None:
        self.sequence = 7
        self.entries: dict[int, tuple[dict, object]] = {}

    def update(self, sequence, key, value, fetched_keys=None):
        assert sequence == 7
        self.entries[key] = (value, fetched_keys)


class _Event:
    def __init__(self, user: str, event_id: str) -> None:
        self.state_key, self.event_id = user, event_id


def test_a_join_batch_caches_only_true_state_for_its_new_groups():
    """Group g_i is the state after join i. A wrong entry would make Synapse see the wrong
    room state, so every entry must be exactly what the database would give."""
    member = "m.room.member"
    final = {
        ("m.room.create", ""): "$create", ("m.room.join_rules", ""): "$rules",
        (member, "@bot:h"): "$botjoin", (member, "@a:h"): "$ja", (member, "@b:h"): "$jb", (member, "@c:h"): "$jc",
    }
    batch = internals.JoinBatch(
        room_id="!r:h", start_state_group=1,
        events=[(_Event("@a:h", "$ja"), None), (_Event("@b:h", "$jb"), None), (_Event("@c:h", "$jc"), None)],
        final_state=final,
        prior=[None, "$b_left_earlier", None],
    )
    store = type("Store", (), {})()
    store._state_group_members_cache, store._state_group_cache = _RecordingCache(), _RecordingCache()
    internals._remember_state_groups(store, batch, [11, 12, 13])

    others = {("m.room.create", ""): "$create", ("m.room.join_rules", ""): "$rules"}
    assert all(store._state_group_cache.entries[g] == (others, None) for g in (11, 12, 13))
    members = store._state_group_members_cache.entries
    # After a's join: a is in; b's membership is still the leave from before the batch.
    assert members[11] == ({(member, "@a:h"): "$ja", (member, "@b:h"): "$b_left_earlier"}, {(member, "@a:h"), (member, "@b:h")})
    # After b's join: b is in; c had no membership (known absent).
    assert members[12] == ({(member, "@b:h"): "$jb"}, {(member, "@b:h"), (member, "@c:h")})
    # The last group: the whole member list.
    assert members[13] == ({k: v for k, v in final.items() if k[0] == member}, None)
