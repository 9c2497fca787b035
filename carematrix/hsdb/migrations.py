"""Every CareMatrix table in the homeserver database, as one numbered list of migrations.

``carematrix_schema_version`` holds one row: the number of the last migration applied. A
Synapse process applies what is missing when our modules start (``synapse_modules.hs_schema``);
the command-line tools only read the number and refuse a database older or newer than the
code (:func:`require_current`). Nothing else creates or alters our tables.

Upgrading takes two transactions, :func:`prepare` then :func:`migrate`, because of how the
workers of one deployment are kept from racing when they start together:

* PostgreSQL: :func:`migrate` begins with ``LOCK TABLE carematrix_schema_version``, so one
  process migrates while the others wait, and each then reads the version the previous one
  committed. The lock has to come before any query: under REPEATABLE READ (Synapse's level)
  the transaction's snapshot is taken by its first query, and a snapshot taken before the
  wait would not see the other process's upgrade. The table it locks is created beforehand
  by :func:`prepare`, under a transaction-scoped advisory lock (two concurrent ``CREATE
  TABLE`` of the same name fail on the catalog).
* SQLite: the transaction takes the write lock with its first statement (``BEGIN IMMEDIATE``
  on our own connections; a write to the version table inside Synapse's), so a second
  process waits for the first to commit.

Migration 1 is the schema as CareMatrix created it before migrations were numbered. It only
adds what is missing, so it adopts a database that code made (all tables or some: the audit
and the protection tables were created separately) with every row in place, and checks that
each table it finds has the columns the code reads. Later migrations are plain statements run
once. To add one, append a :class:`Migration` with the next number and never edit a
released one (docs/architecture.md, "Changing a table").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from carematrix.hsdb.audit_store import check_dialect, sql

VERSION_TABLE = "carematrix_schema_version"

# pg_advisory_xact_lock key that serialises prepare() across worker processes.
_PREPARE_LOCK_KEY = 0x63617363_68656D61


@dataclass(frozen=True)
class Migration:
    """One step: ``apply(txn, dialect)`` runs inside the upgrading transaction."""

    version: int
    description: str
    apply: Callable[[Any, str], None]


class SchemaVersionError(Exception):
    """The database's schema is not the version this code was written for."""

    def __init__(self, found: int, expected: int, database: str = "homeserver database") -> None:
        self.found = found
        self.expected = expected
        if found > expected:
            text = (
                f"the {database} is at CareMatrix schema version {found}, newer than this "
                f"CareMatrix knows (version {expected}): a newer CareMatrix upgraded it. Run that "
                "version, or restore the database backup taken before the upgrade."
            )
        elif found == 0:
            text = (
                f"the {database} has no CareMatrix schema version yet (made before "
                f"numbered migrations, or never started); this CareMatrix needs version {expected}. "
                "Start the homeserver with this version once (it upgrades the database), then try again."
            )
        else:
            text = (
                f"the {database} is at CareMatrix schema version {found}, older than this "
                f"CareMatrix needs (version {expected}). Start the homeserver with this version "
                "once (it upgrades the database), then try again."
            )
        super().__init__(text)


class SchemaMismatch(Exception):
    """A table of ours exists without a column the code reads: not made by CareMatrix."""


# -- migration 1: the schema as created before migrations were numbered ----------------------


def _baseline_statements(dialect: str) -> list[str]:
    # SQLite: INTEGER PRIMARY KEY is the rowid (no separate index); BIGINT would not be.
    int_key = "INTEGER PRIMARY KEY" if dialect == "sqlite" else "BIGINT PRIMARY KEY"
    return [
        # the audit trail (docs/audit.md)
        f"""CREATE TABLE IF NOT EXISTS carematrix_audit_log (
            seq {int_key},
            recorded_at BIGINT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            object TEXT,
            room TEXT,
            patient TEXT,
            outcome TEXT NOT NULL,
            source TEXT,
            process TEXT NOT NULL,
            rule TEXT,
            details TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS carematrix_audit_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq BIGINT NOT NULL,
            hash TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS carematrix_audit_checkpoint (
            seq BIGINT PRIMARY KEY,
            hash TEXT NOT NULL,
            signed_at BIGINT NOT NULL,
            key_id TEXT NOT NULL,
            signature TEXT NOT NULL
        )""",
        # Searches filter on one of these and list newest first, so seq rides along.
        "CREATE INDEX IF NOT EXISTS carematrix_audit_log_actor ON carematrix_audit_log (actor, seq)",
        "CREATE INDEX IF NOT EXISTS carematrix_audit_log_action ON carematrix_audit_log (action, seq)",
        "CREATE INDEX IF NOT EXISTS carematrix_audit_log_time ON carematrix_audit_log (recorded_at)",
        # Most records concern no patient and many no room: partial indexes stay small.
        "CREATE INDEX IF NOT EXISTS carematrix_audit_log_room ON carematrix_audit_log (room, seq) "
        "WHERE room IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS carematrix_audit_log_patient ON carematrix_audit_log (patient, seq) "
        "WHERE patient IS NOT NULL",
        # the chain's genesis: seq 0 and the all-zero hash (carematrix.audit.chain.GENESIS_HASH)
        "INSERT INTO carematrix_audit_head (id, seq, hash) VALUES (1, 0, '" + "0" * 64 + "') "
        "ON CONFLICT (id) DO NOTHING",
        # no-forward fingerprints and where each was first posted (docs/protection.md)
        f"""CREATE TABLE IF NOT EXISTS carematrix_protected_fingerprint (
            fp {int_key},
            origin BIGINT NOT NULL
        )""",
        f"""CREATE TABLE IF NOT EXISTS carematrix_protected_origin (
            id {int_key},
            room_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            ts BIGINT NOT NULL
        )""",
        # media posted in protected rooms, and who was served which watermarked rendering
        """CREATE TABLE IF NOT EXISTS carematrix_protected_media (
            media_id TEXT NOT NULL,
            room_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            other_files TEXT NOT NULL,
            posted_at BIGINT NOT NULL,
            PRIMARY KEY (media_id, room_id)
        )""",
        """CREATE TABLE IF NOT EXISTS carematrix_watermark_delivery (
            mark_id TEXT PRIMARY KEY,
            media_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            minute BIGINT NOT NULL,
            first_served_at BIGINT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS carematrix_watermark_delivery_media "
        "ON carematrix_watermark_delivery (media_id, minute)",
        # burn-after-read: every message that must be purged, until it has been
        """CREATE TABLE IF NOT EXISTS carematrix_burn (
            event_id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            sent_at BIGINT NOT NULL,
            grace_ms BIGINT NOT NULL,
            deadline BIGINT NOT NULL,
            recipients TEXT NOT NULL,
            media TEXT NOT NULL,
            all_read_at BIGINT,
            burn_at BIGINT NOT NULL,
            burned_at BIGINT,
            outcome TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS carematrix_burn_pending ON carematrix_burn (burn_at) "
        "WHERE burned_at IS NULL",
    ]


# The columns each baseline table must have when it already existed.
_BASELINE_COLUMNS = {
    "carematrix_audit_log": "seq, recorded_at, actor, action, object, room, patient, outcome, "
    "source, process, rule, details, prev_hash, hash",
    "carematrix_audit_head": "id, seq, hash",
    "carematrix_audit_checkpoint": "seq, hash, signed_at, key_id, signature",
    "carematrix_protected_fingerprint": "fp, origin",
    "carematrix_protected_origin": "id, room_id, event_id, ts",
    "carematrix_protected_media": "media_id, room_id, event_id, kind, other_files, posted_at",
    "carematrix_watermark_delivery": "mark_id, media_id, user_id, minute, first_served_at",
    "carematrix_burn": "event_id, room_id, sender, sent_at, grace_ms, deadline, recipients, media, "
    "all_read_at, burn_at, burned_at, outcome",
}


def _baseline(txn: Any, dialect: str) -> None:
    for table, columns in _BASELINE_COLUMNS.items():
        if not _table_exists(txn, dialect, table):
            continue
        try:
            txn.execute(f"SELECT {columns} FROM {table} WHERE 1 = 0")
        except Exception as exc:  # either driver's "no such column"
            raise SchemaMismatch(
                f"{table} exists but lacks columns CareMatrix reads ({exc}); it was not made by "
                "CareMatrix: rename it or restore the database"
            ) from exc
        txn.fetchall()
    for statement in _baseline_statements(dialect):
        txn.execute(statement)


# -- migration 2: perceptual features of protected images (docs/protection.md) ---------------


def _protected_images(txn: Any, dialect: str) -> None:
    int_key = "INTEGER PRIMARY KEY" if dialect == "sqlite" else "BIGINT PRIMARY KEY"
    blob = "BLOB" if dialect == "sqlite" else "BYTEA"
    txn.execute(
        f"""CREATE TABLE carematrix_protected_image (
            id {int_key},
            room_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            media_id TEXT NOT NULL,
            features {blob} NOT NULL,
            ts BIGINT NOT NULL
        )"""
    )
    # The lookup index: its primary key is the index, so on SQLite the table is stored as
    # that B-tree alone (WITHOUT ROWID), half the size of a rowid table plus an index.
    txn.execute(
        """CREATE TABLE carematrix_protected_image_bucket (
            bucket BIGINT NOT NULL,
            image BIGINT NOT NULL,
            PRIMARY KEY (bucket, image)
        )"""
        + (" WITHOUT ROWID" if dialect == "sqlite" else "")
    )


# -- migration 3: the index form of Chinese text in Synapse's search indexes (docs/search.md)


def _add_search_form(txn: Any, dialect: str) -> None:
    # Which form of Chinese text Synapse's full-text indexes were last rebuilt in
    # (carematrix/hsdb/search_form_store.py); no row: rows written before CareMatrix indexed
    # Chinese, re-indexed at the next start.
    txn.execute(
        """CREATE TABLE carematrix_search_form (
            index_name TEXT PRIMARY KEY,
            form TEXT NOT NULL,
            rows_reindexed BIGINT NOT NULL,
            reindexed_at BIGINT NOT NULL
        )"""
    )


# -- migration 4: operations-console sessions (docs/console.md) ---------------------------


def _console_sessions(txn: Any, dialect: str) -> None:
    # Keyed by the SHA-256 of the cookie (carematrix/hsdb/console_session_store.py): the
    # cookie value itself is never stored.
    txn.execute(
        """CREATE TABLE carematrix_console_session (
            token_hash TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            csrf TEXT NOT NULL,
            is_admin INTEGER NOT NULL,
            started_at BIGINT NOT NULL,
            last_used_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL
        )"""
    )
    txn.execute("CREATE INDEX carematrix_console_session_user ON carematrix_console_session (user_id, started_at)")


# -- migration 5: crowded lookup buckets are marked, and their index rows removed --------


def _crowded_buckets(txn: Any, dialect: str) -> None:
    # A bucket that more than COMMON_BUCKET protected images share says nothing about which
    # one a candidate copies, yet a probe used to read its rows on every check
    # (carematrix/hsdb/image_store.py). It is now kept as a mark, and its rows go.
    txn.execute(
        "CREATE TABLE carematrix_protected_image_crowded (bucket BIGINT PRIMARY KEY)"
        + (" WITHOUT ROWID" if dialect == "sqlite" else "")
    )
    txn.execute(
        "INSERT INTO carematrix_protected_image_crowded (bucket) SELECT bucket "
        f"FROM carematrix_protected_image_bucket GROUP BY bucket HAVING count(*) > {_COMMON_BUCKET}"
    )
    txn.execute(
        "DELETE FROM carematrix_protected_image_bucket WHERE bucket IN "
        "(SELECT bucket FROM carematrix_protected_image_crowded)"
    )


# The value of carematrix.protect.perceptual.COMMON_BUCKET when migration 5 was written:
# a released migration never changes, even if the constant does.
_COMMON_BUCKET = 32


# -- migration 6: three lookup tables instead of four -----------------------------------------


def _three_lookup_tables(txn: Any, dialect: str) -> None:
    # Features were filed under four hash tables; a probe descends the index once per key, so
    # the fourth table cost a quarter of every check for one copy in 1,470 of the accuracy
    # corpus (docs/benchmarks.md). Tables 0-2 keep their keys; table 3's rows and marks go.
    # The key is the table number above 24 bits of bucket (carematrix.protect.perceptual).
    first_of_table_3 = 3 << 24
    for table in ("carematrix_protected_image_bucket", "carematrix_protected_image_crowded"):
        txn.execute(f"DELETE FROM {table} WHERE bucket >= {first_of_table_3}")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the tables as created before migrations were numbered", _baseline),
    Migration(2, "perceptual features of images posted in no-forward rooms", _protected_images),
    Migration(3, "the index form of Chinese text in Synapse's search indexes", _add_search_form),
    Migration(4, "operations-console sessions", _console_sessions),
    Migration(5, "crowded perceptual lookup buckets marked, their rows removed", _crowded_buckets),
    Migration(6, "three perceptual lookup tables instead of four", _three_lookup_tables),
)

LATEST = MIGRATIONS[-1].version


def check_numbering(migrations: Sequence[Migration]) -> None:
    """Versions run 1, 2, 3 ... in order: a gap or a duplicate would skip or repeat a step."""
    numbers = [m.version for m in migrations]
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"migrations must be numbered 1..n in order, got {numbers}")


check_numbering(MIGRATIONS)


# -- applying them ---------------------------------------------------------------------------


def _table_exists(txn: Any, dialect: str, table: str) -> bool:
    if dialect == "postgres":
        txn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    else:
        txn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    row = txn.fetchone()
    return bool(row and row[0])


def prepare(txn: Any, dialect: str) -> None:
    """Transaction 1 of an upgrade: create the version table if missing (nothing else)."""
    check_dialect(dialect)
    if _table_exists(txn, dialect, VERSION_TABLE):
        return
    if dialect == "postgres":
        txn.execute("SELECT pg_advisory_xact_lock(%s)", (_PREPARE_LOCK_KEY,))
        txn.fetchall()
    txn.execute(
        f"""CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL,
            upgraded_at BIGINT NOT NULL
        )"""
    )


def migrate(
    txn: Any,
    dialect: str,
    migrations: Sequence[Migration] = MIGRATIONS,
    database: str = "homeserver database",
) -> tuple[int, int]:
    """Transaction 2 of an upgrade, and its first statement: apply every migration the
    database lacks, in order. Returns (version before, version after); raises
    :class:`SchemaVersionError` for a database newer than ``migrations``, leaving it as is."""
    check_dialect(dialect)
    check_numbering(migrations)
    if dialect == "postgres":
        txn.execute(f"LOCK TABLE {VERSION_TABLE} IN EXCLUSIVE MODE")
    else:
        # A write first, so that SQLite takes the write lock now even when the caller's
        # transaction began deferred (Synapse's does), and the read below is current.
        txn.execute(f"UPDATE {VERSION_TABLE} SET version = version WHERE id = 1")
    found = _read_version(txn)
    latest = len(migrations)
    if found > latest:
        raise SchemaVersionError(found, latest, database)
    if found == latest:
        return found, found
    if found == 0:
        txn.execute(sql(f"INSERT INTO {VERSION_TABLE} (id, version, upgraded_at) VALUES (1, 0, ?)", dialect),
                    (_now_ms(),))
    for migration in migrations[found:]:
        migration.apply(txn, dialect)
    txn.execute(
        sql(f"UPDATE {VERSION_TABLE} SET version = ?, upgraded_at = ? WHERE id = 1", dialect),
        (latest, _now_ms()),
    )
    return found, latest


def upgrade(
    transaction: Callable[[], AbstractContextManager[Any]],
    dialect: str,
    migrations: Sequence[Migration] = MIGRATIONS,
    database: str = "homeserver database",
) -> tuple[int, int]:
    """Both transactions on a connection of our own: ``transaction()`` yields a cursor in a
    fresh transaction and commits it (``AuditDb.transaction``)."""
    with transaction() as txn:
        prepare(txn, dialect)
    with transaction() as txn:
        return migrate(txn, dialect, migrations, database)


def current_version(txn: Any, dialect: str) -> int:
    """The database's schema version; 0 when it has none (made before migrations, or new)."""
    check_dialect(dialect)
    if not _table_exists(txn, dialect, VERSION_TABLE):
        return 0
    return _read_version(txn)


def require_current(txn: Any, dialect: str, expected: int = LATEST) -> None:
    """For tools that read our tables without upgrading them: refuse any other version."""
    found = current_version(txn, dialect)
    if found != expected:
        raise SchemaVersionError(found, expected)


def _read_version(txn: Any) -> int:
    txn.execute(f"SELECT version FROM {VERSION_TABLE} WHERE id = 1")
    row = txn.fetchone()
    return int(row[0]) if row else 0


def _now_ms() -> int:
    return int(time.time() * 1000)
