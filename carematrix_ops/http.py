"""A small blocking JSON-over-HTTP helper for the command-line tools (no event loop needed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class HttpError(Exception):
    def __init__(self, status: int, body: Any, url: str) -> None:
        self.status = status
        self.body = body
        self.url = url
        errcode = body.get("errcode") if isinstance(body, dict) else None
        message = body.get("error") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status} from {url}: {errcode or ''} {message or ''}".strip())

    @property
    def errcode(self) -> str | None:
        return self.body.get("errcode") if isinstance(self.body, dict) else None


def request_json(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 30.0,
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        raise HttpError(exc.code, parsed, url) from None
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def plain_get(
    path: str, *, socket_path: str | None = None, host: str = "", port: int = 0, timeout: float = 2.0,
) -> tuple[int, bytes]:
    """``GET path`` from an HTTP server on a UNIX socket or at ``host``:``port`` (the worker
    deployment's Synapse processes, which the proxy alone faces): status and body. Raises
    OSError if nothing answers."""
    import http.client
    import socket

    class _Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            if socket_path is None:
                self.sock = socket.create_connection((host, port), timeout=timeout)
                return
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(socket_path)
            self.sock = sock

    conn = _Conn("localhost", timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except http.client.HTTPException as exc:
        raise OSError(f"bad answer from {socket_path or f'{host}:{port}'}: {exc}") from exc
    finally:
        conn.close()


def unix_get(socket_path: str, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """``GET path`` from the HTTP server on a UNIX socket: status and body."""
    return plain_get(path, socket_path=socket_path, timeout=timeout)


def unix_get_ok(socket_path: str, path: str, timeout: float = 2.0) -> bool:
    """Does the server on a UNIX socket answer ``GET path`` with 200?"""
    try:
        return unix_get(socket_path, path, timeout)[0] == 200
    except OSError:
        return False


def redis_ping(
    socket_path: str | None = None, host: str = "127.0.0.1", port: int = 6379, timeout: float = 2.0,
    password: str | None = None,
) -> bool:
    """Does the Redis server answer PING (on its UNIX socket, or at host:port; signed in with
    ``password`` when it wants one)?"""
    import socket

    try:
        if socket_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(socket_path)
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
        with sock:
            if password:
                sock.sendall(b"AUTH " + password.encode() + b"\r\n")
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False
