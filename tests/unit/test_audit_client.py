"""The appservice's audit records survive a homeserver that is restarting, and a homeserver
that does not answer never holds up the page that is being recorded."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from mautrix.appservice import AppServiceAPI

from appservice import audit_client
from appservice.audit_client import RECORDS_PATH, AuditClient
from appservice.homeserver import Homeserver


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def client(url: str, session: aiohttp.ClientSession) -> AuditClient:
    api = AppServiceAPI(url, "@carematrix:localhost", "t", client_session=session, log=logging.getLogger("mau"))  # type: ignore[arg-type]
    return AuditClient(Homeserver(lambda: api, "localhost"))


async def serve(handler) -> tuple[web.AppRunner, str]:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_post(RECORDS_PATH, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def test_a_record_refused_while_the_homeserver_restarts_is_sent_again(session: aiohttp.ClientSession):
    seen: list[dict] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({}, status=503 if len(seen) == 1 else 200)

    runner, url = await serve(handler)
    try:
        assert await client(url, session).record(action="appservice.page.opened") is True
        assert len(seen) == 2 and seen[1]["records"][0]["action"] == "appservice.page.opened"
    finally:
        await runner.cleanup()


async def test_a_homeserver_that_never_answers_gives_up_after_bounded_tries(session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch):
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(2)
        return web.json_response({})

    monkeypatch.setattr(audit_client, "TIMEOUT_SECONDS", 0.2)
    runner, url = await serve(handler)
    try:
        assert await client(url, session).record(action="appservice.page.opened") is False
        assert calls == audit_client.ATTEMPTS
    finally:
        await runner.cleanup()


async def test_a_record_the_homeserver_refuses_for_good_is_not_sent_again(session: aiohttp.ClientSession):
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)

    runner, url = await serve(handler)
    try:
        assert await client(url, session).record(action="x") is False
        assert calls == 1
    finally:
        await runner.cleanup()
