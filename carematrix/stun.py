"""A small STUN/TURN client (RFC 8489 / RFC 8656) over UDP: enough to prove the TURN server
does its job, not a media stack.

``carematrix up`` asks the server for a Binding (it answers: it is up); ``carematrix
status`` and the operations console's system page allocate a relay (:func:`relay_check`), and
the end-to-end tests allocate a relay with the credentials the homeserver hands a
client (``/_matrix/client/v3/voip/turnServer``) — what Element does before a call — and check
that credentials made with the wrong secret are refused. Only the long-term credential
mechanism is spoken (the TURN REST scheme coturn's ``use-auth-secret`` checks); no
FINGERPRINT, no TCP, no channel binding.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ALLOCATE_REQUEST = 0x0003
ALLOCATE_SUCCESS = 0x0103
ALLOCATE_ERROR = 0x0113
REFRESH_REQUEST = 0x0004

USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
LIFETIME = 0x000D
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_TRANSPORT = 0x0019
XOR_MAPPED_ADDRESS = 0x0020
UDP_PROTOCOL = 17


class StunError(Exception):
    """The server did not answer, or answered something we cannot read."""


@dataclass(frozen=True)
class StunMessage:
    kind: int
    transaction_id: bytes
    attributes: dict[int, bytes]

    def error(self) -> tuple[int, str] | None:
        raw = self.attributes.get(ERROR_CODE)
        if raw is None or len(raw) < 4:
            return None
        return raw[2] * 100 + raw[3], raw[4:].decode("utf-8", "replace").rstrip("\0")

    def xor_address(self, attribute: int) -> tuple[str, int] | None:
        raw = self.attributes.get(attribute)
        if raw is None or len(raw) < 8:
            return None
        port = struct.unpack("!H", raw[2:4])[0] ^ (MAGIC_COOKIE >> 16)
        if raw[1] == 0x01:
            address = struct.unpack("!I", raw[4:8])[0] ^ MAGIC_COOKIE
            return str(ipaddress.IPv4Address(address)), port
        mask = struct.pack("!I", MAGIC_COOKIE) + self.transaction_id
        return str(ipaddress.IPv6Address(bytes(a ^ b for a, b in zip(raw[4:20], mask, strict=True)))), port


def _attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def encode(kind: int, transaction_id: bytes, attributes: list[tuple[int, bytes]], key: bytes | None = None) -> bytes:
    """A request; with ``key`` it ends in MESSAGE-INTEGRITY (HMAC-SHA1 over the message with
    its length already counting the integrity attribute, as RFC 8489 §14.5 says)."""
    body = b"".join(_attribute(k, v) for k, v in attributes)
    if key is None:
        return struct.pack("!HHI", kind, len(body), MAGIC_COOKIE) + transaction_id + body
    header = struct.pack("!HHI", kind, len(body) + 24, MAGIC_COOKIE) + transaction_id
    digest = hmac.new(key, header + body, hashlib.sha1).digest()
    return header + body + _attribute(MESSAGE_INTEGRITY, digest)


def decode(data: bytes) -> StunMessage:
    if len(data) < 20:
        raise StunError(f"a {len(data)}-byte answer is no STUN message")
    kind, length, cookie = struct.unpack("!HHI", data[:8])
    if cookie != MAGIC_COOKIE or len(data) < 20 + length:
        raise StunError("the answer is no STUN message (magic cookie or length wrong)")
    attributes: dict[int, bytes] = {}
    offset = 20
    while offset + 4 <= 20 + length:
        attr, size = struct.unpack("!HH", data[offset:offset + 4])
        attributes.setdefault(attr, data[offset + 4:offset + 4 + size])
        offset += 4 + size + (-size % 4)
    return StunMessage(kind, data[8:20], attributes)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()  # noqa: S324 - RFC 8489 §9.2.2


def rest_credentials(secret: str, username: str) -> str:
    """The password the TURN REST scheme derives from the shared secret (what Synapse hands
    out and coturn checks): base64(HMAC-SHA1(secret, username))."""
    import base64

    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


class StunClient:
    """One UDP socket to one server; each request waits ``timeout`` seconds, tried ``tries``
    times (UDP may drop a datagram)."""

    def __init__(self, host: str, port: int, timeout: float = 1.0, tries: int = 3) -> None:
        self.address = (host, port)
        self.timeout = timeout
        self.tries = tries
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> StunClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, kind: int, attributes: list[tuple[int, bytes]], key: bytes | None = None) -> StunMessage:
        transaction_id = os.urandom(12)
        data = encode(kind, transaction_id, attributes, key)
        for _ in range(self.tries):
            self.sock.sendto(data, self.address)
            try:
                while True:
                    answer = decode(self.sock.recv(2048))
                    if answer.transaction_id == transaction_id:
                        return answer
            except TimeoutError:
                continue
            except OSError as exc:  # ICMP port unreachable: nothing listens
                raise StunError(f"{self.address[0]}:{self.address[1]}: {exc}") from exc
        raise StunError(f"no STUN answer from {self.address[0]}:{self.address[1]} after {self.tries} tries")

    def binding(self) -> tuple[str, int] | None:
        """The address the server sees us at; raises StunError when it does not answer."""
        answer = self.request(BINDING_REQUEST, [])
        if answer.kind != BINDING_SUCCESS:
            raise StunError(f"Binding answered with message type {answer.kind:#06x}")
        return answer.xor_address(XOR_MAPPED_ADDRESS)

    def allocate(self, username: str, password: str) -> tuple[str, int]:
        """A UDP relay allocated with long-term credentials: the relayed address. The first
        request carries none and is answered 401 with the realm and nonce to use. Raises
        :class:`TurnRefused` when the server refuses the credentials."""
        transport = [(REQUESTED_TRANSPORT, bytes([UDP_PROTOCOL, 0, 0, 0]))]
        challenge = self.request(ALLOCATE_REQUEST, transport)
        error = challenge.error()
        if challenge.kind != ALLOCATE_ERROR or error is None or error[0] != 401:
            raise StunError(f"Allocate without credentials answered {challenge.kind:#06x} {error}")
        realm = challenge.attributes[REALM].decode()
        nonce = challenge.attributes[NONCE]
        key = long_term_key(username, realm, password)
        auth = [(USERNAME, username.encode()), (REALM, realm.encode()), (NONCE, nonce)]
        answer = self.request(ALLOCATE_REQUEST, transport + auth, key)
        if answer.kind != ALLOCATE_SUCCESS:
            code, reason = answer.error() or (0, "")
            raise TurnRefused(code, reason)
        relayed = answer.xor_address(XOR_RELAYED_ADDRESS)
        if relayed is None:
            raise StunError("Allocate succeeded without a relayed address")
        # Give the relay back at once: a check must not hold server resources.
        self.request(REFRESH_REQUEST, [(LIFETIME, struct.pack("!I", 0)), *auth], key)
        return relayed


class TurnRefused(StunError):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"TURN refused the allocation: {code} {reason}")
        self.code = code
        self.reason = reason


def relay_check(host: str, port: int, secret: str, uris: list[str], now: float) -> tuple[bool, str]:
    """(healthy, what to say): coturn allocates a relay with credentials made from the
    deployment's shared secret, as the homeserver makes them for a phone — proving both
    that it runs and that the two agree. Blocking (UDP with retries): run it off a loop."""
    username = f"{int(now) + 60}:carematrix-status"
    try:
        with StunClient(host, port) as client:
            relay = client.allocate(username, rest_credentials(secret, username))
    except (StunError, OSError) as exc:
        return False, f"{host}:{port}: {exc}"
    return True, f"{host}:{port} (relay allocated at {relay[0]}:{relay[1]}; clients are told {', '.join(uris)})"
