"""Start-up order in the appservice: nothing reads a table before it exists (health says
"starting"), and admin-only upkeep waits until the service is server admin."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from appservice.homeserver import MatrixCallFailed
from appservice.main import HEALTH_PATH, Bot
from appservice.oncall.service import OncallService


class TablesNotCreated:
    """A clinical store before ``setup()``: any query fails as SQLite would."""

    def __init__(self) -> None:
        self.created = False

    async def counts(self) -> dict[str, int]:
        if not self.created:
            raise RuntimeError("no such table: hl7_inbox")
        return {"delivered": 0}

    async def undelivered(self) -> list[dict[str, Any]]:
        if not self.created:
            raise RuntimeError("no such table: hl7_inbox")
        return []


def make_bot() -> tuple[Bot, TablesNotCreated]:
    config = SimpleNamespace(homeserver_url="http://127.0.0.1:1", as_token="t")
    appserv = SimpleNamespace(bot_mxid="@carematrix:localhost", ready=False)
    policy = SimpleNamespace(current=SimpleNamespace(digest="d" * 64))
    org = SimpleNamespace(last_report=None)
    oncall = SimpleNamespace(feed_errors={})
    bot = Bot(config, appserv, policy, org, oncall)  # type: ignore[arg-type]
    store = TablesNotCreated()
    bot.clinical = SimpleNamespace(store=store)  # type: ignore[attr-defined]
    return bot, store


def body_of(resp: web.Response) -> dict[str, Any]:
    assert resp.text is not None
    return json.loads(resp.text)


async def test_health_says_starting_and_reads_no_table_until_ready():
    bot, store = make_bot()
    before = await bot.health(make_mocked_request("GET", HEALTH_PATH))
    assert before.status == 503
    assert body_of(before)["status"] == "starting"
    assert "hl7" not in body_of(before)

    store.created = True
    bot.ready.set()
    after = await bot.health(make_mocked_request("GET", HEALTH_PATH))
    assert after.status == 200
    assert body_of(after)["status"] == "ok"
    assert body_of(after)["hl7"] == {"delivered": 0}


async def test_endpoints_that_read_tables_answer_503_until_ready():
    bot, _ = make_bot()
    served: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.json_response({})

    early = await bot.readiness_gate(make_mocked_request("POST", "/_carematrix/fhir/Observation"), handler)
    assert early.status == 503
    assert early.headers["Retry-After"]
    assert body_of(early)["resourceType"] == "OperationOutcome"
    assert body_of(early)["issue"][0]["code"] == "transient"
    alert = await bot.readiness_gate(make_mocked_request("GET", "/_carematrix/alerts/LIS/123"), handler)
    assert alert.status == 503
    assert body_of(alert)["errcode"] == "M_NOT_READY"
    # Health answers for itself; Synapse's own appservice API is not ours to hold back.
    await bot.readiness_gate(make_mocked_request("GET", HEALTH_PATH), handler)
    await bot.readiness_gate(make_mocked_request("PUT", "/_matrix/app/v1/transactions/1"), handler)
    assert served == [HEALTH_PATH, "/_matrix/app/v1/transactions/1"]

    bot.ready.set()
    late = await bot.readiness_gate(make_mocked_request("POST", "/_carematrix/fhir/Observation"), handler)
    assert late.status == 200
    assert served[-1] == "/_carematrix/fhir/Observation"


class AdminApi:
    """The admin API as Synapse answers it before and after the bot is made server admin."""

    def __init__(self) -> None:
        self.admin = False
        self.calls = 0

    async def call(self, method: str, path: str, body: Any = None, as_user: str | None = None) -> Any:
        self.calls += 1
        if not self.admin:
            raise MatrixCallFailed(method, path, 403, {"errcode": "M_FORBIDDEN", "error": "You are not a server admin"})
        return {"name": "@carematrix:localhost", "admin": True}


async def test_admin_only_upkeep_waits_until_the_service_is_server_admin(caplog):
    api = AdminApi()
    oncall = OncallService(None, None, api, "@carematrix:localhost", None, None)  # type: ignore[arg-type]
    assert await oncall.server_admin() is False
    assert await oncall.server_admin() is False
    api.admin = True
    assert await oncall.server_admin() is True
    calls = api.calls
    assert await oncall.server_admin() is True
    assert api.calls == calls  # once admin, not asked again
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
