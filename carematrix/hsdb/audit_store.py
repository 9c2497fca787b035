"""The audit tables' append and read paths, on any DB-API cursor in SQLite or PostgreSQL.

Every function takes the transaction's cursor (``txn``) and the ``dialect``, because the
Synapse module runs them inside ``ModuleApi.run_db_interaction`` (Synapse's own pool and
transaction), while the command-line tools, tests and benchmarks run them on connections
of their own (:mod:`carematrix_ops.audit_db`). Nothing here commits: the caller's transaction
decides, so a record is stored together with whatever it describes, or not at all.

One order for every writer: ``carematrix_audit_head`` holds the last (seq, hash) and every
append locks it for the rest of its transaction, so appends from any number of Synapse
workers queue up behind one another and each extends the chain the previous one committed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from carematrix.audit.chain import canonical, canonical_json, link_hash
from carematrix.audit.record import AuditRecord

Dialect = Literal["sqlite", "postgres"]
DIALECTS: tuple[str, ...] = ("sqlite", "postgres")

LOG = "carematrix_audit_log"
HEAD = "carematrix_audit_head"
CHECKPOINT = "carematrix_audit_checkpoint"

# Column order of every SELECT of the log (see row_fields / row_record).
COLUMNS = (
    "seq, recorded_at, actor, action, object, room, patient, outcome, source, process, rule, "
    "details, prev_hash, hash"
)
_INSERT_CHUNK = 200  # rows per INSERT statement: 2,800 parameters, far below either limit


class AuditStoreError(Exception):
    """The audit tables are not in the state an append needs (a bug or tampering)."""


def check_dialect(dialect: str) -> None:
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be 'sqlite' or 'postgres', got {dialect!r}")


def sql(statement: str, dialect: str) -> str:
    """Write statements with ``?`` placeholders; PostgreSQL (psycopg2) wants ``%s``.

    Synapse's own transaction wrapper accepts either on PostgreSQL, so converted statements
    work inside ``run_db_interaction`` and on a bare psycopg2 cursor alike.
    """
    return statement.replace("?", "%s") if dialect == "postgres" else statement


@dataclass(frozen=True)
class StoredRecord:
    """A record as it sits in the log: its place in the chain and its link hashes."""

    seq: int
    record: AuditRecord
    prev_hash: str
    hash: str


def _lock_head(txn: Any, dialect: str) -> tuple[int, str]:
    if dialect == "postgres":
        # LOCK TABLE before any query: under Synapse's default REPEATABLE READ the snapshot
        # is taken by the first query, so taking the lock first means we see the head the
        # previous appender committed. FOR UPDATE then turns the rare caller that queried
        # something earlier in its transaction into a retryable serialization failure
        # (Synapse retries those) instead of a duplicate seq.
        txn.execute(f"LOCK TABLE {HEAD} IN EXCLUSIVE MODE")
        txn.execute(f"SELECT seq, hash FROM {HEAD} WHERE id = 1 FOR UPDATE")
    else:
        # A write first makes SQLite take its write lock now (BEGIN IMMEDIATE semantics even
        # inside a deferred transaction), so the head read below cannot be stale.
        txn.execute(f"UPDATE {HEAD} SET seq = seq WHERE id = 1")
        txn.execute(f"SELECT seq, hash FROM {HEAD} WHERE id = 1")
    row = txn.fetchone()
    if row is None:
        raise AuditStoreError(f"{HEAD} has no row; the database was not migrated (carematrix.hsdb.migrations)")
    return int(row[0]), str(row[1])


def lock_for_append(txn: Any, dialect: str) -> None:
    """Take the chain's append lock as a transaction's first statement.

    A transaction that reads other tables and then appends (the no-forward check writing the
    message's record in the same round trip) would otherwise hold a snapshot older than the
    head it locks: under concurrent senders on PostgreSQL every such append then fails with
    a serialization error, Synapse's five retries run out and the message is refused with
    ``internal.error``. Locked first, it waits its turn instead."""
    check_dialect(dialect)
    _lock_head(txn, dialect)


def head(txn: Any, dialect: str) -> tuple[int, str]:
    """The last (seq, hash) appended, without locking; (0, GENESIS_HASH) when empty."""
    check_dialect(dialect)
    txn.execute(f"SELECT seq, hash FROM {HEAD} WHERE id = 1")
    row = txn.fetchone()
    if row is None:
        raise AuditStoreError(f"{HEAD} has no row; the database was not migrated (carematrix.hsdb.migrations)")
    return int(row[0]), str(row[1])


def _row_values(
    seq: int, record: AuditRecord, details: str, prev: str, digest: str
) -> tuple[Any, ...]:
    return (
        seq,
        record.time,
        record.actor,
        record.action,
        record.object,
        record.room,
        record.patient,
        record.outcome,
        record.source,
        record.process,
        record.rule,
        details,
        prev,
        digest,
    )


def append(txn: Any, dialect: str, records: Sequence[AuditRecord]) -> list[int]:
    """Append ``records`` in order as one batch; returns their sequence numbers.

    The head is locked once per batch, so a batch of 50 costs about what one record costs.
    The caller commits; until then other appenders wait on the head lock.
    """
    check_dialect(dialect)
    if not records:
        return []
    for r in records:
        if not isinstance(r, AuditRecord):
            raise TypeError(f"append takes AuditRecord objects, got {type(r).__name__}")
    last_seq, prev = _lock_head(txn, dialect)
    rows = []
    seq = last_seq
    for record in records:
        seq += 1
        fields = record.fields()
        digest = link_hash(prev, canonical(fields), seq)
        # details are stored as exactly the canonical bytes that were hashed
        details = canonical_json(fields["details"]).decode("utf-8")
        rows.append(_row_values(seq, record, details, prev, digest))
        prev = digest
    for start in range(0, len(rows), _INSERT_CHUNK):
        chunk = rows[start : start + _INSERT_CHUNK]
        placeholders = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
        txn.execute(
            sql(f"INSERT INTO {LOG} ({COLUMNS}) VALUES {placeholders}", dialect),
            [v for row in chunk for v in row],
        )
    txn.execute(
        sql(f"UPDATE {HEAD} SET seq = ?, hash = ? WHERE id = 1 AND seq = ?", dialect),
        (seq, prev, last_seq),
    )
    if getattr(txn, "rowcount", 1) != 1:
        raise AuditStoreError(f"{HEAD} moved during an append; the transaction must be retried")
    return list(range(last_seq + 1, seq + 1))


def row_fields(row: Sequence[Any]) -> dict[str, Any]:
    """The hashed fields of a log row (a SELECT of :data:`COLUMNS`), exactly as stored."""
    return {
        "action": row[3],
        "actor": row[2],
        "details": json.loads(row[11]),
        "object": row[4],
        "outcome": row[7],
        "patient": row[6],
        "process": row[9],
        "room": row[5],
        "rule": row[10],
        "source": row[8],
        "time": row[1],
    }


def row_record(row: Sequence[Any]) -> StoredRecord:
    """A log row as a :class:`StoredRecord` (re-validated, so a tampered row may raise)."""
    record = AuditRecord(
        time=int(row[1]),
        actor=row[2],
        action=row[3],
        object=row[4],
        room=row[5],
        patient=row[6],
        outcome=row[7],
        source=row[8],
        process=row[9],
        rule=row[10],
        details=json.loads(row[11]),
    )
    return StoredRecord(int(row[0]), record, row[12], row[13])


def iter_rows(
    txn: Any, dialect: str, after_seq: int = 0, batch: int = 10_000
) -> Iterator[tuple[Any, ...]]:
    """Every log row with seq > ``after_seq`` in seq order, fetched ``batch`` rows at a time.

    Keyset pagination on the primary key: each batch is one index range scan, memory stays
    flat at any log size, and it works on any cursor (Synapse's wrapper has no server-side
    cursors).
    """
    check_dialect(dialect)
    statement = sql(f"SELECT {COLUMNS} FROM {LOG} WHERE seq > ? ORDER BY seq LIMIT ?", dialect)
    while True:
        txn.execute(statement, (after_seq, batch))
        rows = txn.fetchall()
        if not rows:
            return
        yield from rows
        after_seq = rows[-1][0]
        if len(rows) < batch:
            return


def read_range(txn: Any, dialect: str, after_seq: int, limit: int) -> list[StoredRecord]:
    """Up to ``limit`` stored records after ``after_seq`` (the syslog forwarder's feed)."""
    check_dialect(dialect)
    txn.execute(
        sql(f"SELECT {COLUMNS} FROM {LOG} WHERE seq > ? ORDER BY seq LIMIT ?", dialect),
        (after_seq, limit),
    )
    return [row_record(r) for r in txn.fetchall()]
