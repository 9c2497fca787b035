"""RFC 5424 syslog messages for audit records, and TCP (RFC 6587) / UDP transports.

Shaped like IHE ATNA's Record Audit Event: facility 10 (security/authorization), severity
5 (notice) or 4 (warning) for refusals and failures, APP-NAME ``carematrix``, MSGID the
CareMatrix action, and as MSG the FHIR AuditEvent (or a compact JSON record) in UTF-8.
The structured data carries the record's seq, hash and prev hash: a collector that keeps
them holds an independent copy of the chain, which is what catches a truncated log even
when the checkpoints in the database were removed too.

TCP frames use octet counting (``<length> <message>``), so a message may contain newlines
and still be split correctly.
"""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Sequence
from typing import Any

from carematrix.audit.actions import SUCCESS
from carematrix.audit.checkpoint import Checkpoint
from carematrix.audit.fhir import DEFAULT_PATIENT_SYSTEM, audit_event
from carematrix.audit.record import iso_time
from carematrix.audit.search import as_dict
from carematrix.hsdb.audit_store import StoredRecord

FACILITY_AUTHPRIV = 10
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
APP_NAME = "carematrix"
# SD-ID "name@PEN": 32473 is IANA's example enterprise number (RFC 5612); a hospital with
# its own Private Enterprise Number should pass that instead.
DEFAULT_SD_ID = "carematrix@32473"
BOM = b"\xef\xbb\xbf"
PAYLOADS = ("fhir", "json")


def _header_field(value: str | None, limit: int) -> str:
    """PRINTUSASCII only (33..126), truncated; ``-`` when empty (RFC 5424 NILVALUE)."""
    if not value:
        return "-"
    clean = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return clean or "-"


def _param_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def structured_data(sd_id: str, params: Sequence[tuple[str, str | None]]) -> str:
    body = "".join(f' {k}="{_param_value(v)}"' for k, v in params if v is not None)
    return f"[{sd_id}{body}]"


def format_message(
    pri: int, time_us: int, hostname: str, procid: str, msgid: str, sd: str, msg: bytes
) -> bytes:
    header = (
        f"<{pri}>1 {iso_time(time_us)} {_header_field(hostname, 255)} {APP_NAME} "
        f"{_header_field(procid, 128)} {_header_field(msgid, 32)} {sd} "
    )
    return header.encode("utf-8") + BOM + msg


def format_record(
    stored: StoredRecord,
    hostname: str,
    server_name: str,
    payload: str = "fhir",
    sd_id: str = DEFAULT_SD_ID,
    patient_system: str = DEFAULT_PATIENT_SYSTEM,
) -> bytes:
    """One stored record as an RFC 5424 message (bytes, without transport framing)."""
    r = stored.record
    severity = SEVERITY_NOTICE if r.outcome == SUCCESS else SEVERITY_WARNING
    if payload == "fhir":
        body: dict[str, Any] = audit_event(stored, server_name, patient_system)
    elif payload == "json":
        body = as_dict(stored)
    else:
        raise ValueError(f"payload must be one of {', '.join(PAYLOADS)}, got {payload!r}")
    sd = structured_data(
        sd_id,
        [
            ("seq", str(stored.seq)),
            ("hash", stored.hash),
            ("prev", stored.prev_hash),
            ("actor", r.actor),
            ("outcome", r.outcome),
        ],
    )
    msg = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return format_message(
        FACILITY_AUTHPRIV * 8 + severity, r.time, hostname, r.process, r.action, sd, msg
    )


def format_checkpoint(
    cp: Checkpoint, hostname: str, procid: str = "main", sd_id: str = DEFAULT_SD_ID
) -> bytes:
    """A signed checkpoint as a message (MSGID ``audit.checkpoint``): an off-site copy."""
    sd = structured_data(sd_id, [("seq", str(cp.seq)), ("hash", cp.hash), ("key", cp.key_id)])
    msg = json.dumps(cp.to_json(), separators=(",", ":")).encode("utf-8")
    return format_message(
        FACILITY_AUTHPRIV * 8 + SEVERITY_NOTICE,
        cp.signed_at,
        hostname,
        procid,
        "audit.checkpoint",
        sd,
        msg,
    )


def octet_frame(message: bytes) -> bytes:
    """RFC 6587 octet-counting frame: ASCII length, one space, the message."""
    return str(len(message)).encode("ascii") + b" " + message


def read_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Split octet-counted frames off ``buffer``; returns (messages, unconsumed rest)."""
    messages: list[bytes] = []
    while True:
        space = buffer.find(b" ")
        if space <= 0:
            return messages, buffer
        length = int(buffer[:space])
        end = space + 1 + length
        if len(buffer) < end:
            return messages, buffer
        messages.append(buffer[space + 1 : end])
        buffer = buffer[end:]


class TcpTransport:
    """Sends messages to a syslog collector over TCP, reconnecting as needed.

    ``send`` raises ``OSError`` when the collector cannot be reached; nothing is then
    considered sent. A collector never writes to the connection, so a readable socket means
    it was closed: that is checked before every send, because the first write after the
    peer went away would otherwise "succeed" into the kernel buffer and be lost.
    """

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._sock: socket.socket | None = None

    def _connection(self) -> socket.socket:
        if self._sock is not None:
            readable, _, _ = select.select([self._sock], [], [], 0)
            if readable:
                try:
                    closed = self._sock.recv(4096) == b""
                except OSError:
                    closed = True
                if closed:
                    self.close()
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        return self._sock

    def send(self, messages: Sequence[bytes]) -> None:
        try:
            self._connection().sendall(b"".join(octet_frame(m) for m in messages))
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


class UdpTransport:
    """One datagram per message (RFC 5426): no delivery guarantee, keep messages small."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self._sock = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM
        )

    def send(self, messages: Sequence[bytes]) -> None:
        for m in messages:
            self._sock.sendto(m, self.address)

    def close(self) -> None:
        self._sock.close()
