"""The appservice's audit records survive a homeserver that is restarting, and a homeserver
that does not answer never holds up the page that is being recorded."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from appservice import audit_client
from appservice.audit_client import RECORDS_PATH, AuditClient
from tests.homeserver_stand_in import as_appservice, serve


def client(url: str, session: aiohttp.ClientSession) -> AuditClient:
    return AuditClient(as_appservice(url, session))


async def test_a_record_refused_while_the_homeserver_restarts_is_sent_again(session: aiohttp.ClientSession):
    seen: list[dict] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({}, status=503 if len(seen) == 1 else 200)

    runner, url = await serve([web.post(RECORDS_PATH, handler)])
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
    runner, url = await serve([web.post(RECORDS_PATH, handler)])
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

    runner, url = await serve([web.post(RECORDS_PATH, handler)])
    try:
        assert await client(url, session).record(action="x") is False
        assert calls == 1
    finally:
        await runner.cleanup()
