"""What the appservice must not lose is written down before the homeserver's transaction
that carried it is answered.

mautrix answers a transaction (200) first and runs the event handlers after, and the
homeserver never sends an answered transaction again: anything a handler would have stored
is lost to a crash or a stop in between. So every transaction is looked at here, on its way
in, in front of mautrix: each *taker* — the voice queue (appservice.voice), the event inbox
(appservice.inbox) — writes down the events it wants before the transaction goes on to
mautrix. If any of them cannot, the transaction is refused (503, a WARNING in the log) and
the homeserver sends it again later; writing down is idempotent by event ID, so what one
taker wrote before another failed is not written twice.

Each taker names a few byte strings (``needles``): a transaction whose raw body holds none of
them is passed on without being parsed (a cheap look at every transaction); only the others
are parsed and handed to the takers, which pick precisely.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any, Protocol

from aiohttp import web

log = logging.getLogger("carematrix.appservice")

# The appservice API's transaction pushes (v1, and the legacy unprefixed path).
TRANSACTIONS_PREFIX = ("/_matrix/app/v1/transactions/", "/transactions/")


class Taker(Protocol):
    #: What the taker writes down, for the log and the refusal ("voice messages").
    what: str
    #: A transaction whose raw body holds none of these has nothing for the taker.
    needles: tuple[bytes, ...]

    async def accept(self, events: list[Any]) -> int:
        """Write down what the taker wants of a transaction's events (JSON), before the
        transaction is answered; how many. Raises if they could not be written."""
        ...


class Intake:
    def __init__(self, hs_token: str) -> None:
        self.hs_token = hs_token
        self.takers: list[Taker] = []

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if (
            not self.takers or request.method != "PUT" or not request.path.startswith(TRANSACTIONS_PREFIX)
            or not self._from_homeserver(request)
        ):
            return await handler(request)
        body = await request.read()  # kept by aiohttp: mautrix reads the same bytes after
        takers = [t for t in self.takers if any(needle in body for needle in t.needles)]
        if not takers:
            return await handler(request)
        try:
            events = json.loads(body).get("events")
        except (ValueError, AttributeError):
            return await handler(request)  # mautrix answers a body that is not JSON
        if isinstance(events, list):
            for taker in takers:
                try:
                    await taker.accept(events)
                except Exception as exc:
                    log.warning("a transaction with %s was refused for now (the homeserver sends it again): "
                                "they could not be written down: %s", taker.what, exc, exc_info=True)
                    return web.json_response(
                        {"errcode": "M_UNKNOWN", "error": f"{taker.what} could not be stored; send again"},
                        status=503,
                    )
        return await handler(request)

    def _from_homeserver(self, request: web.Request) -> bool:
        """The homeserver's token, where mautrix looks for it (header or query)."""
        given = request.headers.get("Authorization", "").removeprefix("Bearer ") or request.query.get("access_token", "")
        return hmac.compare_digest(given.encode(), self.hs_token.encode())
