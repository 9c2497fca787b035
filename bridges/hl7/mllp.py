"""MLLP framing (HL7 v2 over TCP): ``0x0B payload 0x1C 0x0D``.

TCP delivers a byte stream, not messages, so a read can hold half a message, several
messages, or line noise left by a sender that reconnected mid-message. The decoder keeps no
socket of its own: the listener feeds it whatever ``recv`` returned.
"""

from __future__ import annotations

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
DEFAULT_MAX_BYTES = 1 << 20


class MllpError(Exception):
    """A frame too large to be a sane HL7 message (a runaway sender, or a peer that is not
    speaking MLLP). ``messages`` holds the complete payloads decoded earlier in the same
    read, so a good admission sent just before the garbage is not lost with it."""

    def __init__(self, text: str, messages: list[bytes] | None = None) -> None:
        super().__init__(text)
        self.messages: list[bytes] = messages or []


def frame(payload: bytes) -> bytes:
    """Refuses payloads containing the block characters: HL7 text in any charset we accept
    never holds them, and sending one would let the peer cut the message short."""
    if START_BLOCK in payload or b"\x1c" in payload:
        raise MllpError("payload contains an MLLP block character (0x0B or 0x1C)")
    return START_BLOCK + payload + END_BLOCK


class MllpDecoder:
    """Incremental deframer for one connection.

    Bytes outside a frame are discarded and counted in ``junk`` so the listener can log a
    misbehaving sender. A start block inside an unfinished frame means the sender gave up
    on that frame and began again; the abandoned part counts as junk. After an
    ``MllpError`` the oversized frame is dropped and decoding resumes at the next start
    block (the rest of the read that overflowed is dropped with it), though the caller
    will usually close the connection instead.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.junk = 0
        self._buffer = bytearray()
        self._in_frame = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame; a listener can time out a peer that stalls mid-frame."""
        return len(self._buffer) if self._in_frame else 0

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads of every frame completed by ``data``, in arrival order."""
        messages: list[bytes] = []
        position, size = 0, len(data)
        while position < size:
            if not self._in_frame:
                start = data.find(START_BLOCK, position)
                if start < 0:
                    self.junk += size - position
                    break
                self.junk += start - position
                position = start + 1
                self._open()
                continue
            if self._buffer.endswith(b"\x1c") and data[position] == END_BLOCK[1]:
                # The end block was split between two reads.
                del self._buffer[-1]
                self._close(messages)
                position += 1
                continue
            end = data.find(END_BLOCK, position)
            limit = size if end < 0 else end
            restart = data.find(START_BLOCK, position, limit)
            if restart >= 0:
                self.junk += len(self._buffer) + restart - position
                position = restart + 1
                self._open()
                continue
            self._buffer += data[position:limit]
            if len(self._buffer) > self.max_bytes:
                self._drop_oversized(messages)
            if end < 0:
                break
            self._close(messages)
            position = end + len(END_BLOCK)
        return messages

    def _open(self) -> None:
        self._in_frame = True
        self._buffer.clear()

    def _close(self, messages: list[bytes]) -> None:
        messages.append(bytes(self._buffer))
        self._in_frame = False
        self._buffer.clear()

    def _drop_oversized(self, messages: list[bytes]) -> None:
        size = len(self._buffer)
        self._in_frame = False
        self._buffer.clear()
        raise MllpError(
            f"MLLP frame exceeds {self.max_bytes} bytes ({size} bytes buffered)", list(messages)
        )
