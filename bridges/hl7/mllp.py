"""MLLP framing (HL7 v2 over TCP): ``0x0B payload 0x1C 0x0D``.

TCP delivers a byte stream, not messages, so a read can hold half a message, several
messages, or line noise left by a sender that reconnected mid-message. The decoder keeps no
socket of its own: the listener feeds it whatever ``recv`` returned.
"""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
DEFAULT_MAX_BYTES = 1 << 20
# How much of an oversize frame is kept: enough for its MSH (so the refusal can name the
# message) and for an analyst reading the dead letter, without holding the whole runaway.
HEAD_BYTES = 1 << 16


class MllpError(Exception):
    """A frame too large to be a sane HL7 message (a runaway sender, or a peer that is not
    speaking MLLP). ``messages`` holds the complete payloads decoded earlier in the same
    read, so a good admission sent just before the garbage is not lost with it."""

    def __init__(self, text: str, messages: list[bytes] | None = None) -> None:
        super().__init__(text)
        self.messages: list[bytes] = messages or []


@dataclass(frozen=True)
class Frame:
    """One frame up to its end block. An oversize frame carries only its first bytes: the
    listener must refuse it (the sender is waiting for an answer) rather than parse it."""

    payload: bytes
    size: int
    oversize: bool = False


def limit_text(max_bytes: int) -> str:
    """The limit as a sender's interface analyst would write it: "1 MiB", not 1048576."""
    if max_bytes % (1 << 20) == 0:
        return f"{max_bytes >> 20} MiB"
    if max_bytes % (1 << 10) == 0:
        return f"{max_bytes >> 10} KiB"
    return f"{max_bytes} bytes"


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
    on that frame and began again; the abandoned part counts as junk. A frame that grows
    past ``max_bytes`` is not an error of the stream: its first bytes are kept, the rest is
    read and dropped up to its end block, and it comes out as an oversize ``Frame`` in its
    place, so the sender can be answered and the next frame decodes normally.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.junk = 0
        self._keep = min(HEAD_BYTES, max_bytes)
        self._buffer = bytearray()
        self._in_frame = False
        self._size = 0  # bytes of the current frame, kept or not
        self._oversize = False
        self._split_end = False  # the last byte taken was 0x1C: 0x0D may follow in the next read

    @property
    def in_frame(self) -> bool:
        """A start block arrived and its end block has not: the sender owes us the rest."""
        return self._in_frame

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame; a listener can time out a peer that stalls mid-frame."""
        return self._size if self._in_frame else 0

    @property
    def partial(self) -> bytes:
        """What is kept of an unfinished frame (its first bytes), for the dead letter of a
        frame that never ends."""
        return bytes(self._buffer) if self._in_frame else b""

    def frames(self, data: bytes) -> list[Frame]:
        """Every frame completed by ``data``, in arrival order, oversize ones included."""
        out: list[Frame] = []
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
            if self._split_end and data[position] == END_BLOCK[1]:
                self._size -= 1
                if not self._oversize:
                    del self._buffer[-1]
                self._close(out)
                position += 1
                continue
            end = data.find(END_BLOCK, position)
            limit = size if end < 0 else end
            restart = data.find(START_BLOCK, position, limit)
            if restart >= 0:
                self.junk += self._size + restart - position
                position = restart + 1
                self._open()
                continue
            self._take(data[position:limit])
            if end < 0:
                break
            self._close(out)
            position = end + len(END_BLOCK)
        return out

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads of every frame completed by ``data``, for a peer that only reads
        short answers (an ACK reader). An oversize frame raises ``MllpError``; frames after
        it in the same read are dropped with it."""
        messages: list[bytes] = []
        for item in self.frames(data):
            if item.oversize:
                raise MllpError(
                    f"MLLP frame of {item.size} bytes exceeds the {limit_text(self.max_bytes)} limit",
                    messages,
                )
            messages.append(item.payload)
        return messages

    def _take(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._size += len(chunk)
        self._split_end = chunk.endswith(END_BLOCK[:1])
        if self._oversize:
            return
        self._buffer += chunk
        # A trailing 0x1C may be half of the end block, so it does not count yet.
        if self._size - int(self._split_end) > self.max_bytes:
            self._oversize = True
            del self._buffer[self._keep:]

    def _open(self) -> None:
        self._in_frame = True
        self._buffer.clear()
        self._size = 0
        self._oversize = False
        self._split_end = False

    def _close(self, out: list[Frame]) -> None:
        out.append(Frame(bytes(self._buffer), self._size, self._oversize))
        self._in_frame = False
        self._buffer.clear()
        self._size = 0
        self._oversize = False
        self._split_end = False
