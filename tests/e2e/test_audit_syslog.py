"""Audit records reach the hospital's syslog collector, and none is lost while it is down."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from nio import RoomSendResponse

from synapse_modules.audit_syslog import read_frames
from tests.ports import free_port
from tests.support import start_stack, stop_stack


class Collector:
    """A real TCP syslog collector on loopback that can be stopped and started again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[bytes] = []
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        server.settimeout(0.2)
        self._server = server
        self._thread = threading.Thread(target=self._serve, args=(server,), daemon=True)
        self._thread.start()

    def _serve(self, server: socket.socket) -> None:
        while self._server is server:
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(0.2)
            buffer = b""
            while self._server is server:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                frames, buffer = read_frames(buffer + chunk)
                self.messages.extend(frames)
            conn.close()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._thread is not None:
            self._thread.join(5)

    def wait_for(self, needle: bytes, timeout: float = 60) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in list(self.messages):
                if needle in message:
                    return message
            time.sleep(0.2)
        raise AssertionError(f"collector never received {needle!r}")


async def test_records_reach_the_collector_and_survive_its_outage(tmp_path: Path):
    collector = Collector(free_port())
    collector.start()
    running = start_stack("sqlite", tmp_path, audit_syslog=f"127.0.0.1:{collector.port}")
    try:
        nurse = await running.login("n3001")
        login = collector.wait_for(b"auth.login")
        assert login.startswith(b"<") and b" carematrix " in login  # RFC 5424 header, APP-NAME
        collector.stop()
        icu = (await nurse.room_resolve_alias(f"#icu-team:{running.server_name}")).room_id
        sent = await nurse.room_send(icu, "m.room.message", {"msgtype": "m.text", "body": "sent while the collector is down"})
        assert isinstance(sent, RoomSendResponse), sent
        await nurse.close()
        time.sleep(2)  # the forwarder tries, fails and keeps the record in its spool
        collector.start()
        delivered = collector.wait_for(sent.event_id.encode())
        assert b"message.send" in delivered
        assert b"sent while the collector is down" not in b"".join(collector.messages)
    finally:
        stop_stack(running)
        collector.stop()
