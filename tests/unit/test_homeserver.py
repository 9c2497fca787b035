"""The appservice's homeserver calls over mautrix's client, as an admin reading the logs and
org sync reports sees them: a refusal names the endpoint, the status and the homeserver's
own words; a homeserver that does not answer is said as such, with the endpoint; users of
the appservice's namespaces are acted as with the appservice token."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from appservice.homeserver import HomeserverUnreachable, MatrixCallFailed
from tests.homeserver_stand_in import as_appservice, serve


async def test_calls_act_as_the_bot_or_as_a_namespace_user_and_keep_query_strings(session: aiohttp.ClientSession):
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "query": dict(request.query), "auth": request.headers.get("Authorization"),
                     "body": await request.json() if request.can_read_body else None})
        return web.json_response({"ok": True})

    runner, url = await serve([web.route("*", "/{tail:.*}", handler)])
    try:
        hs = as_appservice(url, session)
        assert await hs.call("GET", "/_synapse/admin/v2/users?from=0&limit=1000") == {"ok": True}
        await hs.call("POST", "/_matrix/client/v3/join/%21r%3Alocalhost", {}, as_user="@role-icu:localhost")
        await hs.call("POST", "/_synapse/client/carematrix/org/joins", {"room_id": "!r:localhost", "user_ids": []})
    finally:
        await runner.cleanup()
    assert seen[0]["path"] == "/_synapse/admin/v2/users"
    assert seen[0]["query"] == {"from": "0", "limit": "1000"}  # as the bot: no user_id (a filter here)
    assert seen[1]["path"] == "/_matrix/client/v3/join/!r:localhost"
    assert seen[1]["query"] == {"user_id": "@role-icu:localhost"}
    assert seen[2]["body"] == {"room_id": "!r:localhost", "user_ids": []}
    assert {s["auth"] for s in seen} == {"Bearer as-token"}


async def test_a_refusal_names_the_endpoint_status_and_the_homeservers_words(session: aiohttp.ClientSession):
    async def forbidden(request: web.Request) -> web.Response:
        return web.json_response({"errcode": "M_FORBIDDEN", "error": "You are not a server admin"}, status=403)

    async def busy(request: web.Request) -> web.Response:
        return web.json_response({"errcode": "M_UNKNOWN", "error": "Internal server error"}, status=502)

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="upstream timed out", status=504)

    runner, url = await serve([web.get("/forbidden", forbidden), web.put("/busy", busy), web.get("/plain", plain)])
    try:
        hs = as_appservice(url, session)
        with pytest.raises(MatrixCallFailed) as refused:
            await hs.call("GET", "/forbidden")
        with pytest.raises(MatrixCallFailed) as failing:
            await hs.call("PUT", "/busy", {"displayname": "x"})
        with pytest.raises(MatrixCallFailed) as proxy:
            await hs.call("GET", "/plain")
    finally:
        await runner.cleanup()
    assert str(refused.value).startswith("GET /forbidden: HTTP 403")
    assert refused.value.reason == "HTTP 403 M_FORBIDDEN: You are not a server admin"
    assert (refused.value.status, refused.value.errcode, refused.value.transient) == (403, "M_FORBIDDEN", False)
    assert str(failing.value).startswith("PUT /busy: HTTP 502") and failing.value.transient
    assert proxy.value.reason == "HTTP 504: upstream timed out" and proxy.value.transient


async def test_a_homeserver_that_does_not_answer_is_said_with_the_endpoint(session: aiohttp.ClientSession):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    hs = as_appservice(f"http://127.0.0.1:{port}", session)
    with pytest.raises(HomeserverUnreachable) as unreachable:
        await hs.call("POST", "/_matrix/client/v3/createRoom", {})
    assert str(unreachable.value).startswith("POST /_matrix/client/v3/createRoom: the homeserver could not be reached")
    assert unreachable.value.transient


async def test_a_user_acts_with_their_own_token(session: aiohttp.ClientSession):
    seen: list[tuple[str, str | None, dict[str, str]]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.method, request.headers.get("Authorization"), dict(request.query)))
        return web.json_response({})

    runner, url = await serve([web.route("*", "/{tail:.*}", handler)])
    try:
        user = as_appservice(url, session).with_token("user-token")
        await user.call("PUT", "/_matrix/client/v3/pushrules/global/override/rule?before=%2Eother", {"actions": []})
    finally:
        await runner.cleanup()
    assert seen == [("PUT", "Bearer user-token", {"before": ".other"})]


async def test_media_goes_up_and_comes_back_and_a_missing_file_is_a_refusal(session: aiohttp.ClientSession):
    stored: dict[str, bytes] = {}

    async def upload(request: web.Request) -> web.Response:
        stored["m1"] = await request.read()
        assert request.headers["Content-Type"] == "application/pdf" and request.query["filename"] == "case.pdf"
        return web.json_response({"content_uri": "mxc://localhost/m1"})

    async def download(request: web.Request) -> web.Response:
        if request.match_info["media"] not in stored:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "Not found"}, status=404)
        return web.Response(body=stored[request.match_info["media"]], content_type="application/pdf")

    runner, url = await serve([
        web.post("/_matrix/media/v3/upload", upload),
        web.get("/_matrix/client/v1/media/download/localhost/{media}", download),
    ])
    try:
        hs = as_appservice(url, session)
        mxc = await hs.upload(b"%PDF-1.7", "application/pdf", "case.pdf")
        assert mxc == "mxc://localhost/m1"
        assert await hs.download(mxc) == b"%PDF-1.7"
        with pytest.raises(MatrixCallFailed) as missing:
            await hs.download("mxc://localhost/gone")
    finally:
        await runner.cleanup()
    assert "mxc://localhost/gone" in str(missing.value)
    assert missing.value.reason == "HTTP 404 M_NOT_FOUND: Not found"  # the homeserver's words, for the room
