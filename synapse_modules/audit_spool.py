"""A durable spool between the audit log and a syslog collector.

Messages are written to an SQLite file (under the data dir) before they are sent and
deleted only after the transport accepted them, so a collector that is down, restarting
or unreachable loses nothing: sending resumes in the original order once it is back.

The spool is fed from the audit log itself (:func:`fill_from_log`), by seq: it remembers
the highest seq it ever took, so a crash between the database commit and the spool write
cannot drop a record, and records from every Synapse worker reach the collector in the one
order the chain defines. Run one forwarder per deployment (the main Synapse process).

Delivery is at least once: if the collector dies after receiving part of a batch, that
batch is sent again; the seq in each message's structured data lets it drop duplicates.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from carematrix.hsdb.audit_store import StoredRecord, read_range
from carematrix.hsdb.migrations import upgrade
from carematrix.hsdb.sqlite_wal import use_wal
from synapse_modules.audit_spool_migrations import SPOOL_MIGRATIONS

log = logging.getLogger(__name__)


class Transport(Protocol):
    def send(self, messages: Sequence[bytes]) -> None: ...

    def close(self) -> None: ...


class Spool:
    """An ordered, durable queue of ready-to-send messages in one SQLite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        try:
            use_wal(self._db, 30.0)
            self._db.execute("PRAGMA synchronous = FULL")
            upgrade(self._transaction, "sqlite", SPOOL_MIGRATIONS, database="audit spool")
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction on the spool file (its schema upgrade, each ``put``)."""
        cursor = self._db.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield cursor
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")

    @property
    def high_seq(self) -> int:
        """The highest audit seq ever spooled (0 if none): where filling resumes."""
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE key = 'high_seq'").fetchone()
        return int(row[0]) if row else 0

    def put(self, items: Iterable[tuple[int | None, bytes]]) -> int:
        """Spool (seq, message) pairs in one transaction; returns how many were added.

        Items with a seq at or below :attr:`high_seq` are skipped (already spooled once), so
        filling twice from the same stretch of the log is harmless. ``None`` is for messages
        that are not log records (checkpoints).
        """
        added = 0
        with self._lock, self._transaction() as cur:
            row = cur.execute("SELECT value FROM state WHERE key = 'high_seq'").fetchone()
            high = int(row[0]) if row else 0
            for seq, message in items:
                if seq is not None:
                    if seq <= high:
                        continue
                    high = seq
                cur.execute("INSERT INTO spool (seq, message) VALUES (?, ?)", (seq, message))
                added += 1
            cur.execute(
                "INSERT INTO state (key, value) VALUES ('high_seq', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (high,),
            )
        return added

    def pending(self, limit: int = 100) -> list[tuple[int, bytes]]:
        """The oldest unsent messages as (spool id, message)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, message FROM spool ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [(int(i), bytes(m)) for i, m in rows]

    def ack(self, up_to_id: int) -> None:
        """Forget every message up to and including ``up_to_id``: they were sent."""
        with self._lock:
            self._db.execute("DELETE FROM spool WHERE id <= ?", (up_to_id,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM spool").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def fill_from_log(
    txn: Any,
    dialect: str,
    spool: Spool,
    formatter: Callable[[StoredRecord], bytes],
    batch: int = 500,
) -> int:
    """Spool up to ``batch`` log records after the spool's high-water seq; returns how many."""
    records = read_range(txn, dialect, spool.high_seq, batch)
    return spool.put((s.seq, formatter(s)) for s in records)


class Forwarder:
    """Sends spooled messages in order; stops at the first failure and retries later."""

    def __init__(self, spool: Spool, transport: Transport, batch: int = 100) -> None:
        self.spool = spool
        self.transport = transport
        self.batch = batch
        self.last_error: OSError | None = None

    def send_pending(self) -> int:
        """Send until the spool is empty or the collector fails; returns messages sent."""
        sent = 0
        while True:
            items = self.spool.pending(self.batch)
            if not items:
                self.last_error = None
                return sent
            try:
                self.transport.send([m for _, m in items])
            except OSError as exc:
                if self.last_error is None:
                    log.warning("audit syslog collector unreachable, spooling: %s", exc)
                self.last_error = exc
                return sent
            self.spool.ack(items[-1][0])
            sent += len(items)

    def run(
        self,
        stop: threading.Event,
        fill: Callable[[], int] | None = None,
        interval: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        """Fill and send until ``stop`` is set; backs off (up to ``max_backoff``) while down."""
        backoff = interval
        while not stop.is_set():
            try:
                if fill is not None:
                    while fill():
                        pass
            except Exception:
                log.exception("audit syslog forwarder could not read the audit log")
            self.send_pending()
            backoff = min(backoff * 2, max_backoff) if self.last_error else interval
            stop.wait(backoff)
        self.transport.close()
