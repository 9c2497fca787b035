"""A real Synapse homeserver (the installed matrix-synapse) running inside the test process,
for the guard tests of synapse_modules/adapter: they call the adapter on Synapse's own
objects, database schema and HTTP request handling, not on stand-ins.

Twisted's reactor runs on a thread of its own for the whole test session; a test hands
coroutines to it with ``Homeserver.call`` and talks HTTP to the homeserver's listener like a
client. One homeserver per database backend (SQLite, PostgreSQL), started once.
"""

from __future__ import annotations

import itertools
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import yaml

from tests.ports import free_port

T = TypeVar("T")

APPSERVICE_TOKEN = "as-token-for-the-adapter-guards"
APPSERVICE_SENDER = "adapterbot"
PASSWORD = "correct horse battery staple"

_reactor_thread: threading.Thread | None = None
_txn_ids = itertools.count()


def start_reactor() -> None:
    """Run the global reactor on a daemon thread (once per process)."""
    global _reactor_thread
    from twisted.internet import reactor

    if _reactor_thread is None:
        _reactor_thread = threading.Thread(
            target=lambda: reactor.run(installSignalHandlers=False), name="reactor", daemon=True
        )
        _reactor_thread.start()


def stop_reactor() -> None:
    global _reactor_thread
    from twisted.internet import reactor

    if _reactor_thread is not None:
        reactor.callFromThread(reactor.stop)
        _reactor_thread.join(10)
        _reactor_thread = None


def on_reactor(func: Callable[[], T]) -> T:
    """Run ``func`` on the reactor thread and return its result (a Deferred is waited for)."""
    from twisted.internet import reactor, threads

    return threads.blockingCallFromThread(reactor, func)


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]
    raw: bytes = b""


@dataclass
class Homeserver:
    name: str
    database: str  # "sqlite" or "postgres"
    port: int
    hs: Any
    tokens: dict[str, str] = field(default_factory=dict)  # user ID -> access token

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.name}"

    def call(self, func: Callable[[], Awaitable[T]]) -> T:
        """Await ``func()`` on the reactor, in a logging context of its own as Synapse's own
        request handling and background processes do."""
        from synapse.logging.context import LoggingContext, PreserveLoggingContext
        from twisted.internet import defer

        async def run() -> T:
            with LoggingContext(name="adapter-guard", server_name=self.name):
                return await func()

        def start() -> Any:
            with PreserveLoggingContext():
                return defer.ensureDeferred(run())

        return on_reactor(start)

    def module_api(self) -> Any:
        """A module API on this homeserver, as a module loaded from homeserver.yaml gets."""
        from synapse.module_api import ModuleApi

        return on_reactor(lambda: ModuleApi(self.hs, self.hs.get_auth_handler()))

    def register(self, localpart: str, admin: bool = False) -> str:
        """A user with ``PASSWORD`` and an access token; returns the user ID."""

        async def register() -> str:
            handler = self.hs.get_registration_handler()
            password_hash = await self.hs.get_auth_handler().hash(PASSWORD)
            user_id = await handler.register_user(localpart=localpart, admin=admin, password_hash=password_hash)
            _, token, _, _ = await handler.register_device(user_id, None, None)
            self.tokens[user_id] = token
            return user_id

        return self.call(register)

    def request(
        self, method: str, path: str, user: str | None = None, body: Any = None,
        token: str | None = None, content_type: str = "application/json",
    ) -> Response:
        """An HTTP request to the homeserver's listener, as ``user`` (or with ``token``)."""
        headers = {}
        token = token or (self.tokens[user] if user else None)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw, got = resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            status, raw, got = err.code, err.read(), dict(err.headers)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return Response(status, parsed, got, raw)

    def create_room(self, user: str, **content: Any) -> str:
        resp = self.request("POST", "/_matrix/client/v3/createRoom", user, content)
        assert resp.status == 200, resp.body
        return resp.body["room_id"]

    def send(self, user: str, room_id: str, content: dict[str, Any], event_type: str = "m.room.message") -> Response:
        txn = f"guard{next(_txn_ids)}"
        return self.request(
            "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/send/{event_type}/{txn}", user, content
        )

    def join(self, user: str, room_id: str) -> Response:
        return self.request("POST", f"/_matrix/client/v3/join/{quote(room_id)}", user, {})

    def upload(self, user: str, data: bytes, content_type: str = "image/png") -> str:
        resp = self.request("POST", "/_matrix/media/v3/upload", user, data, content_type=content_type)
        assert resp.status == 200, resp.body
        return resp.body["content_uri"]

    def stop(self) -> None:
        for port in self.hs._listening_services:
            on_reactor(port.stopListening)


class AdapterHooks:
    """Loaded from the homeserver config like any module, at the point Synapse loads modules
    (before it builds its listeners): installs the adapter's hooks, passing everything
    through until a test installs its own."""

    def __init__(self, config: dict[str, Any], api: Any) -> None:
        from synapse_modules.adapter.auth import install_login_observer
        from synapse_modules.adapter.events import install_event_check
        from synapse_modules.adapter.media import install_media_gate, install_upload_observer
        from synapse_modules.adapter.profile import install_display_name_guard
        from synapse_modules.adapter.search import install_cjk_search

        install_media_gate(PassThroughGate())
        install_cjk_search()
        install_login_observer(ignore_login)
        install_event_check("guard", allow_event)
        install_upload_observer(ignore_upload)
        install_display_name_guard(allow_name)

    @staticmethod
    def parse_config(config: dict[str, Any]) -> dict[str, Any]:
        return config


class PassThroughGate:
    async def handle(self, request: Any, server_name: str | None, media_id: str, kind: str, auth: str, serve_original: Any) -> None:
        await serve_original()


async def ignore_login(request: Any, submission: dict, result: dict | None, error: BaseException | None) -> None:
    return None


async def allow_event(event: Any) -> bool:
    return True


async def ignore_upload(request: Any, stored: Any) -> None:
    return None


async def allow_name(user_id: str, name: Any) -> Any:
    from carematrix.rules import ALLOW

    return ALLOW


class ProbeMapping:
    """An OpenID mapping provider whose answers a test sets (``answers``)."""

    answers: dict[str, Any] = {}

    def __init__(self, config: Any) -> None:
        pass

    @staticmethod
    def parse_config(config: dict[str, Any]) -> dict[str, Any]:
        return config

    def get_remote_user_id(self, userinfo: Any) -> str:
        return str(userinfo["sub"])

    async def map_user_attributes(self, userinfo: Any, token: Any, failures: int) -> dict[str, Any]:
        return self.answers["map_user_attributes"](userinfo)

    async def get_extra_attributes(self, userinfo: Any, token: Any) -> dict[str, Any]:
        return self.answers["get_extra_attributes"](userinfo)


OIDC_IDP = "hospital"


def start_homeserver(root: Path, database: str, pg_dsn: dict[str, Any] | None = None) -> Homeserver:
    """Start a homeserver with its database (a fresh SQLite file, or the empty PostgreSQL
    database ``pg_dsn`` names), an HTTP listener for the client, admin and media APIs, and
    one application service (token ``APPSERVICE_TOKEN``)."""
    from signedjson.key import generate_signing_key, write_signing_keys
    from synapse.app.homeserver import SynapseHomeServer
    from synapse.config.homeserver import HomeServerConfig

    start_reactor()
    name = f"{database}.adapter.test"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "signing.key", "w") as f:
        write_signing_keys(f, [generate_signing_key("a")])
    registration = root / "appservice.yaml"
    registration.write_text(yaml.safe_dump({
        "id": "adapter-guard", "url": None, "as_token": APPSERVICE_TOKEN, "hs_token": "hs-token",
        "sender_localpart": APPSERVICE_SENDER, "rate_limited": False,
        "namespaces": {"users": [{"exclusive": True, "regex": f"@archive-.*:{name}"}], "rooms": [], "aliases": []},
    }))
    if database == "sqlite":
        db_config: dict[str, Any] = {"name": "sqlite3", "args": {"database": str(root / "homeserver.db")}}
    else:
        db_config = {"name": "psycopg2", "args": {**(pg_dsn or {}), "cp_min": 1, "cp_max": 4}}
    port = free_port()
    unlimited = {"per_second": 10_000, "burst_count": 10_000}
    config_dict = {
        "server_name": name,
        "report_stats": False,
        "signing_key_path": str(root / "signing.key"),
        "media_store_path": str(root / "media"),
        "database": db_config,
        "macaroon_secret_key": "m" * 32,
        "form_secret": "f" * 32,
        "listeners": [{
            "port": port, "bind_addresses": ["127.0.0.1"], "type": "http",
            "resources": [{"names": ["client", "media"]}],
        }],
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "trusted_key_servers": [],
        "app_service_config_files": [str(registration)],
        "enable_media_repo": True,
        "dynamic_thumbnails": True,
        "rc_message": unlimited,
        "rc_joins": {"local": unlimited, "remote": unlimited},
        "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
        "rc_invites": {"per_room": unlimited, "per_user": unlimited},
        "rc_media_create": unlimited,
        "rc_room_creation": unlimited,
        "retention": {"enabled": True},
        "bcrypt_rounds": 4,  # registration and login at test speed
        "modules": [{"module": f"{__name__}.AdapterHooks", "config": {}}],
        "oidc_providers": [{
            "idp_id": OIDC_IDP, "idp_name": "Hospital", "issuer": "https://idp.invalid/",
            "client_id": "carematrix", "client_secret": "secret", "discover": False,
            "authorization_endpoint": "https://idp.invalid/authorize", "token_endpoint": "https://idp.invalid/token",
            "userinfo_endpoint": "https://idp.invalid/userinfo", "user_profile_method": "userinfo_endpoint",
            "allow_existing_users": True,
            "user_mapping_provider": {"module": f"{__name__}.ProbeMapping", "config": {}},
        }],
    }
    config = HomeServerConfig()
    config.parse_config_dict(config_dict, str(root), str(root))

    def build() -> Any:
        # As synapse.app._base.start does (without its process-wide signal handling):
        # modules first, then the listeners.
        hs = SynapseHomeServer(name, config=config)
        hs.setup()
        module_api = hs.get_module_api()
        for module, module_config in hs.config.modules.loaded_modules:
            module(module_config, module_api)
        hs.start_listening()
        hs.start_background_tasks()
        return hs

    return Homeserver(name, database, port, on_reactor(build))
