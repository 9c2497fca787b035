"""Forwarding to a real syslog collector over TCP on 127.0.0.1 that goes down and comes back:
nothing is lost, nothing is reordered, and the spool survives a restart of the forwarder."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import pytest

from carematrix.hsdb.audit_store import append
from carematrix.hsdb.migrations import upgrade
from carematrix_ops.audit_db import AuditDb, connect
from synapse_modules.audit_spool import Forwarder, Spool, fill_from_log
from synapse_modules.audit_syslog import TcpTransport, UdpTransport, format_record, read_frames
from tests.integration.audit_workers import sample

WAIT = 20.0
SEQ = re.compile(rb'\[carematrix@32473 seq="(\d+)"')


class Collector:
    """A minimal RFC 6587 syslog collector: accepts connections, splits octet-counted frames."""

    def __init__(self) -> None:
        self.port = 0
        self.messages: list[bytes] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        server.settimeout(0.05)
        self.port = server.getsockname()[1]
        self._server = server
        self._stop.clear()
        self._spawn(self._accept_loop)

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(0.05)
            self._conns.append(conn)
            self._spawn(self._read_loop, conn)

    def _read_loop(self, conn: socket.socket) -> None:
        buffer = b""
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            frames, buffer = read_frames(buffer + chunk)
            with self._cond:
                self.messages += frames
                self._cond.notify_all()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self._threads.clear()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self._conns.clear()
        self._server.close()

    def wait_for(self, count: int) -> list[int]:
        with self._cond:
            arrived = self._cond.wait_for(lambda: len(self.messages) >= count, timeout=WAIT)
        assert arrived, f"collector got {len(self.messages)} messages, expected {count}"
        return [int(SEQ.search(m).group(1)) for m in self.messages]


@pytest.fixture
def collector():
    c = Collector()
    c.start()
    yield c
    if c._server is not None and c._server.fileno() != -1:
        c.stop()


@pytest.fixture
def log_db(tmp_path: Path):
    db = connect(tmp_path / "homeserver.db")
    upgrade(db.transaction, db.dialect)
    yield db
    db.close()


def add(db: AuditDb, start: int, n: int) -> None:
    with db.transaction() as txn:
        append(txn, db.dialect, [sample(i) for i in range(start, start + n)])


def formatter(stored):
    return format_record(stored, "hs1.hospital.example", "hospital.example")


def fill(db: AuditDb, spool: Spool) -> int:
    with db.transaction(read_only=True) as txn:
        return fill_from_log(txn, db.dialect, spool, formatter)


def test_collector_outage_loses_nothing_and_keeps_order(tmp_path, log_db, collector):
    spool_path = tmp_path / "audit-spool.db"
    spool = Spool(spool_path)
    forwarder = Forwarder(spool, TcpTransport("127.0.0.1", collector.port), batch=7)

    add(log_db, 0, 20)
    assert fill(log_db, spool) == 20
    assert forwarder.send_pending() == 20
    assert collector.wait_for(20) == list(range(1, 21))
    assert len(spool) == 0

    collector.stop()
    add(log_db, 20, 15)
    assert fill(log_db, spool) == 15
    assert fill(log_db, spool) == 0  # filling again takes nothing twice
    assert forwarder.send_pending() == 0
    assert forwarder.last_error is not None
    assert len(spool) == 15

    # The forwarder process restarts while the collector is still down: the spool is on disk.
    forwarder.transport.close()
    spool.close()
    spool = Spool(spool_path)
    assert len(spool) == 15 and spool.high_seq == 35

    collector.start()  # same port
    forwarder = Forwarder(spool, TcpTransport("127.0.0.1", collector.port), batch=7)
    assert forwarder.send_pending() == 15
    assert forwarder.last_error is None
    assert collector.wait_for(35) == list(range(1, 36))
    assert len(spool) == 0
    forwarder.transport.close()
    spool.close()


def test_forwarder_loop_follows_the_log(tmp_path, log_db, collector):
    spool = Spool(tmp_path / "audit-spool.db")
    forwarder = Forwarder(spool, TcpTransport("127.0.0.1", collector.port))
    db_path = tmp_path / "homeserver.db"

    def fill_own_connection() -> int:
        with connect(db_path) as db:
            return fill(db, spool)

    stop = threading.Event()
    add(log_db, 0, 5)
    thread = threading.Thread(target=forwarder.run, args=(stop, fill_own_connection, 0.05))
    thread.start()
    try:
        assert collector.wait_for(5) == [1, 2, 3, 4, 5]
        add(log_db, 5, 5)
        assert collector.wait_for(10) == list(range(1, 11))
    finally:
        stop.set()
        thread.join()
    spool.close()


def test_udp_transport_sends_one_datagram_per_message():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(WAIT)
        tx = UdpTransport("127.0.0.1", rx.getsockname()[1])
        tx.send([b"<85>1 first", b"<85>1 second"])
        assert [rx.recv(2048), rx.recv(2048)] == [b"<85>1 first", b"<85>1 second"]
        tx.close()
