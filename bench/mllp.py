"""An HIS-side MLLP connection for the benchmarks: one message in flight, wait for its ACK."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridges.hl7.mllp import MllpDecoder, frame
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.settings import Deployment, Settings
from carematrix_ops.supervisor import Stack
from tests.ports import free_port, free_port_pair


def hl7_deployment(work: Path, **settings: Any) -> Deployment:
    """A prepared CareMatrix deployment (SQLite) on free ports, the MLLP listener's too."""
    return prepare(Settings(data_dir=work / "carematrix", port=free_port_pair(), relaxed_rate_limits=True,
                            hl7_port=free_port(), turn_port=0, **settings))


def start_hl7_stack(work: Path, **settings: Any) -> tuple[Deployment, Stack]:
    """``hl7_deployment``, started; the caller seeds it and stops it."""
    d = hl7_deployment(work, **settings)
    stack = Stack(d)
    stack.start()
    return d, stack


class Mllp:
    def __init__(self, port: int) -> None:
        self.port = port
        self.decoder = MllpDecoder()

    async def __aenter__(self) -> Mllp:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def send(self, payload: bytes) -> None:
        self.writer.write(frame(payload))
        await self.writer.drain()
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("the listener closed the connection without an ACK")
            if self.decoder.feed(data):
                return


async def send_paced(port: int, rate: float, stop: asyncio.Event, message: Callable[[int], bytes],
                     acks: list[tuple[float, float]] | None = None) -> int:
    """``message(0)``, ``message(1)``, … at ``rate`` per second on one connection until ``stop``,
    paced against the clock: after a slow ACK the ones that fell due meanwhile go at once.
    ``acks`` gets (wall time the message was due, ms from then to its ACK), so a message held
    up behind a slow one counts its wait too. Returns how many were sent."""
    async with Mllp(port) as conn:
        start, wall = time.perf_counter(), time.time()
        i = 0
        while not stop.is_set():
            due = start + i / rate
            if due > time.perf_counter():
                await asyncio.sleep(due - time.perf_counter())
            await conn.send(message(i))
            if acks is not None:
                acks.append((wall + (due - start), (time.perf_counter() - due) * 1000))
            i += 1
        return i
