"""Holds for drills and end-to-end tests (``test_clock: true`` in the appservice config only,
like the on-call clock): stop delivered events, or voice messages about to be recognised,
at a gate until released, hold every send of the page outbox, and make the recogniser's
worker die on every voice message.

They make a crash land at a chosen point without guessing at timing: a test holds the event
handlers, sends a page (or a voice message, an ``!ack``) and a later message, and once the
later one is held it knows the homeserver had its answer for the first (one transaction at a
time) while its handler had not run; then it kills the appservice. Holding the outbox stands
for an outage: pages are opened and committed but nothing is sent until it is released, and
then in the outbox's own order.

``POST /_carematrix/test/holds`` with any of ``{"events": bool, "voice": bool,
"outbox": bool, "voice_worker_dies": bool}`` (the appservice token); ``GET`` the same path:
the event IDs held at each gate (for the outbox: the events that opened the pages whose sends
wait). Releasing a gate lets what waits there go on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

PATH = "/_carematrix/test/holds"


class Gate:
    def __init__(self) -> None:
        self.held: list[str] = []
        self._open = asyncio.Event()
        self._open.set()

    @property
    def closed(self) -> bool:
        return not self._open.is_set()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self.held.clear()
        self._open.set()

    async def wait(self, what: str) -> None:
        if self._open.is_set():
            return
        self.held.append(what)
        await self._open.wait()

    def note(self, what: str) -> None:
        """Something held at this gate that does not wait on it (it is tried again later)."""
        if what not in self.held:
            self.held.append(what)


class Holds:
    def __init__(self, as_token: str) -> None:
        self.as_token = as_token
        self.events = Gate()
        self.voice = Gate()
        self.outbox = Gate()
        self.voice_worker_dies = False

    def routes(self, app: web.Application) -> None:
        app.router.add_post(PATH, self.set)
        app.router.add_get(PATH, self.get)

    def _state(self) -> dict[str, Any]:
        return {
            "events": self.events.held if self.events.closed else None,
            "voice": self.voice.held if self.voice.closed else None,
            "outbox": self.outbox.held if self.outbox.closed else None,
            "voice_worker_dies": self.voice_worker_dies,
        }

    async def get(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.as_token}":
            return web.json_response({"errcode": "M_FORBIDDEN", "error": "bad token"}, status=403)
        return web.json_response(self._state())

    async def set(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.as_token}":
            return web.json_response({"errcode": "M_FORBIDDEN", "error": "bad token"}, status=403)
        body = await request.json()
        for name, gate in (("events", self.events), ("voice", self.voice), ("outbox", self.outbox)):
            if name in body and body[name]:
                gate.close()
            elif name in body:
                gate.open()
        if "voice_worker_dies" in body:
            self.voice_worker_dies = bool(body["voice_worker_dies"])
        return web.json_response(self._state())
