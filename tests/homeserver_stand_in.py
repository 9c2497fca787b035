"""A stand-in homeserver for the tests of the appservice's homeserver client: aiohttp routes
on a free loopback port, and the appservice's ``Homeserver`` pointed at it as the appservice."""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web
from mautrix.appservice import AppServiceAPI

from appservice.homeserver import Homeserver

BOT = "@carematrix:localhost"
AS_TOKEN = "as-token"


async def serve(routes: list[web.RouteDef]) -> tuple[web.AppRunner, str]:
    """The routes, served until the caller cleans the runner up; and their base URL."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def as_appservice(url: str, session: aiohttp.ClientSession) -> Homeserver:
    api = AppServiceAPI(url, bot_mxid=BOT, token=AS_TOKEN, client_session=session, log=logging.getLogger("mau"))  # type: ignore[arg-type]
    return Homeserver(lambda: api, "localhost")
