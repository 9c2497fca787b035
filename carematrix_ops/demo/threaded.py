"""An aiohttp app served from a background thread with its own event loop.

The demo EMR and the test identity provider are called by synchronous clients (fhirclient)
and by Synapse while the caller's own event loop waits, so they cannot share that loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web


def serve_in_thread(app: web.Application, name: str, port: int = 0) -> tuple[int, Callable[[], None]]:
    """Start ``app`` on 127.0.0.1 (port 0: a free one); returns (port, stop)."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()
    state: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
            state["port"] = runner.addresses[0][1]
        except BaseException as exc:  # surfaced in the caller's thread below
            state["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    started.wait(30)
    if "port" not in state:
        raise RuntimeError(f"{name} did not start within 30 s") from state.get("error")

    def stop() -> None:
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(30)

    return int(state["port"]), stop
