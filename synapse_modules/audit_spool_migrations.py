"""The syslog spool file's schema, as numbered migrations (same machinery and version row as
the homeserver database, :mod:`carematrix.hsdb.migrations`).

The spool is a local SQLite file of the forwarding Synapse process, not part of either
database, but it holds accepted audit messages until the collector has them: its tables
change by migration like every other table of ours. Migration 1 is the schema as the spool
created it before migrations were numbered, so an existing spool is adopted with its queue.
"""

from __future__ import annotations

from typing import Any

from carematrix.hsdb.migrations import Migration, check_numbering


def _baseline(txn: Any, dialect: str) -> None:
    txn.execute(
        "CREATE TABLE IF NOT EXISTS spool ("
        "id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER, message BLOB NOT NULL)"
    )
    txn.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")


SPOOL_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "spool queue and its high-water seq (adopts a spool made before numbering)", _baseline),
)

check_numbering(SPOOL_MIGRATIONS)
