"""An HIS-side MLLP connection for the benchmarks: one message in flight, wait for its ACK."""

from __future__ import annotations

import asyncio

from bridges.hl7.mllp import MllpDecoder, frame


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
        while not self.decoder.feed(await self.reader.read(65536)):
            pass
