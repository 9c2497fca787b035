"""The MLLP listener: one TCP connection per HIS interface, a frame in, an ACK out.

Two limits protect the service from a sender that misbehaves, and both answer rather than
cut: a frame over the size limit is read to its end block and refused with AR naming the
limit (the HIS's engine shows why and stops resending it), and the connection stays open for
the next message. A frame that starts and never ends ties up a connection the HIS believes is
busy, so it is dead-lettered and the connection closed after the frame timeout; a connection
idle between messages stays open, as HIS engines keep theirs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bridges.hl7.ack import AckCode
from bridges.hl7.errors import INTERNAL_ERROR, Hl7Error
from bridges.hl7.message import Message
from bridges.hl7.mllp import DEFAULT_MAX_BYTES, Frame, MllpDecoder, frame, limit_text
from bridges.hl7.parse import parse_header

log = logging.getLogger("carematrix.appservice.clinical")

DEFAULT_FRAME_TIMEOUT = 30.0
READ_BYTES = 65536
# Not a segment: the ERR segment leaves its location empty, the dead letter and log say MLLP.
LOCATION = "MLLP"

Receive = Callable[[bytes, str], Awaitable[bytes]]
Reject = Callable[[Message | None, bytes, str, AckCode, Hl7Error], Awaitable[bytes]]


@dataclass(frozen=True)
class MllpLimits:
    max_message_bytes: int = DEFAULT_MAX_BYTES
    frame_timeout: float = DEFAULT_FRAME_TIMEOUT


class MllpListener:
    """``receive`` answers a complete message; ``reject`` dead-letters, audits and logs a
    refusal and returns its ACK, so a transport refusal is recorded like any other."""

    def __init__(self, receive: Receive, reject: Reject, limits: MllpLimits) -> None:
        self.receive = receive
        self.reject = reject
        self.limits = limits

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.connection, host, port)

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        peer = f"{host}:{port}"
        decoder = MllpDecoder(self.limits.max_message_bytes)
        loop = asyncio.get_running_loop()
        started: float | None = None  # when the unfinished frame began
        try:
            while True:
                wait = None if started is None else max(0.0, started + self.limits.frame_timeout - loop.time())
                try:
                    data = await asyncio.wait_for(reader.read(READ_BYTES), wait)
                except TimeoutError:
                    await self._unfinished(decoder, peer, f"frame not finished within {self.limits.frame_timeout:g} s")
                    break
                if not data:
                    if decoder.in_frame:
                        await self._unfinished(decoder, peer, "connection closed in the middle of a frame")
                    break
                now = loop.time()
                frames = decoder.frames(data)
                # A frame completed in this read means the unfinished one, if any, is new.
                started = None if not decoder.in_frame else (now if started is None or frames else started)
                for item in frames:
                    writer.write(frame(await self._answer(item, peer)))
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if decoder.junk:
                log.warning("MLLP from %s: %d bytes outside any frame discarded", peer, decoder.junk)
            writer.close()

    async def _answer(self, item: Frame, peer: str) -> bytes:
        if not item.oversize:
            return await self.receive(item.payload, peer)
        limit = limit_text(self.limits.max_message_bytes)
        error = Hl7Error(INTERNAL_ERROR, f"message exceeds the {limit} limit ({item.size} bytes received)", LOCATION)
        return await self.reject(_header(item.payload), item.payload, peer, "AR", error)

    async def _unfinished(self, decoder: MllpDecoder, peer: str, why: str) -> None:
        """Nobody waits for an answer to a frame that never ended; the refusal is recorded
        (dead letter with what arrived, audit, WARNING) and its ACK not sent."""
        text = f"{why} ({decoder.pending} bytes received); connection closed"
        partial = decoder.partial
        await self.reject(_header(partial), partial, peer, "AR", Hl7Error(INTERNAL_ERROR, text, LOCATION))


def _header(head: bytes) -> Message | None:
    """The MSH of a message of which only the first bytes are kept, when all of it is there:
    a cut MSH would echo a wrong control ID."""
    if not any(end in head.lstrip(b"\r\n") for end in (b"\r", b"\n")):
        return None
    return parse_header(head)
