"""Every CareMatrix table in the appservice database, as numbered upgrades (mautrix's
``UpgradeTable``; the version is the one row of ``carematrix_version``).

mautrix's own tables in the same database (the Matrix state cache, ``mx_*``) have their own
upgrade table and version row (``mx_version``), applied by ``Database.start``; ours run right
after it, before any store is used. The stores never create or alter tables.

Upgrade 1 is the schema exactly as the stores created it before upgrades were numbered, run
as they ran it: each table if missing, then the columns added since the first release if
missing, then the indexes. So it adopts a database made by that code (whichever of its
releases) with every row in place, and makes a fresh one the same. Later upgrades are plain
statements, applied once each, in a transaction. To add one, add the next ``@numbered``
function below and never edit a released one (docs/architecture.md, "Changing a table").
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mautrix.util.async_db import Connection, Database, Scheme, UpgradeTable
from mautrix.util.async_db.upgrade import Upgrade

from carematrix.hsdb.migrations import SchemaVersionError

VERSION_TABLE = "carematrix_version"

upgrade_table = UpgradeTable(
    version_table_name=VERSION_TABLE,
    database_name="CareMatrix appservice database",
    log=logging.getLogger("carematrix.appservice.db"),
)


def numbered(description: str) -> Callable[[Upgrade], Upgrade]:
    """Register the decorated function as the next upgrade (``upgrade_table.register``,
    whose result mautrix types as either the upgrade or a decorator)."""

    def register(fn: Upgrade) -> Upgrade:
        upgrade_table.register(fn, description=description)
        return fn

    return register


async def upgrade(db: Database) -> tuple[int, int]:
    """Apply what the database lacks (after ``db.start()``); returns (before, after).

    A database upgraded by a newer CareMatrix is refused with :class:`SchemaVersionError`
    before anything is touched (mautrix's own check says less about what to do)."""
    latest = len(upgrade_table.upgrades)
    found = await current_version(db)
    if found > latest:
        raise SchemaVersionError(found, latest, database="appservice database")
    await upgrade_table.upgrade(db)
    return found, latest


async def current_version(db: Database) -> int:
    if not await db.table_exists(VERSION_TABLE):
        return 0
    return int(await db.fetchval(f"SELECT version FROM {VERSION_TABLE} LIMIT 1") or 0)


# -- upgrade 1: the tables as created before upgrades were numbered --------------------------

_ORG = [
    # the accounts org sync manages (it deactivates only these)
    """
CREATE TABLE IF NOT EXISTS carematrix_org_account (
    localpart TEXT PRIMARY KEY,
    first_synced_at BIGINT NOT NULL
)
""",
]

_ONCALL = [
    """CREATE TABLE IF NOT EXISTS oncall_shift (
        feed_id TEXT NOT NULL, role TEXT NOT NULL, staff_number TEXT NOT NULL,
        start_ts BIGINT NOT NULL, end_ts BIGINT NOT NULL, source TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS oncall_feed (
        feed_id TEXT PRIMARY KEY, digest TEXT, loaded_at BIGINT, last_error TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS oncall_override (
        id TEXT PRIMARY KEY, role TEXT NOT NULL, staff_number TEXT NOT NULL,
        start_ts BIGINT NOT NULL, end_ts BIGINT NOT NULL, replaces TEXT, by_staff TEXT NOT NULL,
        kind TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS oncall_page (
        page_id TEXT PRIMARY KEY, role TEXT NOT NULL, sender TEXT NOT NULL, room_id TEXT NOT NULL,
        event_id TEXT NOT NULL, created_at BIGINT NOT NULL, step INTEGER NOT NULL,
        step_deadline BIGINT, paged TEXT NOT NULL, acked_by TEXT, acked_at BIGINT, state TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS oncall_outbox (
        txn_id TEXT PRIMARY KEY, page_id TEXT NOT NULL, action TEXT NOT NULL, sent INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS oncall_quiet_pref (
        staff_number TEXT PRIMARY KEY, quiet INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS oncall_holders (
        role TEXT PRIMARY KEY, holders TEXT NOT NULL
    )""",
    # The notices that paged someone: a reply or reaction to one acknowledges that page only.
    """CREATE TABLE IF NOT EXISTS oncall_page_notice (
        event_id TEXT PRIMARY KEY, page_id TEXT NOT NULL, room_id TEXT NOT NULL, sent_at BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS oncall_page_notice_room ON oncall_page_notice (room_id, sent_at)",
    """CREATE TABLE IF NOT EXISTS oncall_page_seen (
        page_id TEXT NOT NULL, staff_number TEXT NOT NULL, seen_at BIGINT NOT NULL,
        PRIMARY KEY (page_id, staff_number)
    )""",
    # A role's direct chat with one person: pages for someone who cannot join the page's room.
    """CREATE TABLE IF NOT EXISTS oncall_role_dm (
        role TEXT NOT NULL, staff_number TEXT NOT NULL, room_id TEXT NOT NULL, PRIMARY KEY (role, staff_number)
    )""",
    """CREATE TABLE IF NOT EXISTS oncall_role_room (
        room_id TEXT NOT NULL, role TEXT NOT NULL, requester TEXT NOT NULL, direct INTEGER NOT NULL,
        PRIMARY KEY (room_id, role)
    )""",
]

# Pages stored before pages named their subject lack these.
_ONCALL_ADDED = [
    ("oncall_page", "priority", "TEXT NOT NULL DEFAULT 'urgent'"),
    ("oncall_page", "subject", "TEXT NOT NULL DEFAULT ''"),
    ("oncall_page", "lead", "TEXT"),
    ("oncall_page", "role_name", "TEXT NOT NULL DEFAULT ''"),
]

# HL7 intake, the patient registry and alerts. Written for PostgreSQL; on SQLite BYTEA is
# BLOB and the id columns stay INTEGER PRIMARY KEY (the rowid), see _clinical().
_CLINICAL = [
    """CREATE TABLE IF NOT EXISTS hl7_inbox (
        id INTEGER PRIMARY KEY, facility TEXT NOT NULL, control_id TEXT NOT NULL,
        message_type TEXT NOT NULL, received_at BIGINT NOT NULL, raw BYTEA NOT NULL,
        state TEXT NOT NULL, result TEXT,
        UNIQUE (facility, control_id)
    )""",
    """CREATE TABLE IF NOT EXISTS hl7_dead_letter (
        id INTEGER PRIMARY KEY, received_at BIGINT NOT NULL, peer TEXT NOT NULL,
        raw BYTEA NOT NULL, error_code TEXT NOT NULL, error TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS clinical_patient (
        patient_id TEXT PRIMARY KEY, name TEXT NOT NULL, ward TEXT, bed TEXT, updated_at BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS clinical_direct (
        user_id TEXT PRIMARY KEY, room_id TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS clinical_alert (
        control_id TEXT NOT NULL, facility TEXT NOT NULL, page_id TEXT NOT NULL, role TEXT NOT NULL,
        PRIMARY KEY (facility, control_id, page_id)
    )""",
    # The room opened for an alert with no ward (one per inbound message, kept across restarts).
    """CREATE TABLE IF NOT EXISTS clinical_alert_room (
        inbox_id BIGINT PRIMARY KEY, room_id TEXT NOT NULL
    )""",
]


async def _clinical_added(conn: Connection, scheme: Scheme) -> None:
    """Columns added to the intake since its first release, each with the index that uses it."""
    # Critical results are delivered ahead of the backlog.
    await _add_missing_column(conn, scheme, "hl7_inbox", "urgent", "INTEGER NOT NULL DEFAULT 0")
    await conn.execute("CREATE INDEX IF NOT EXISTS hl7_inbox_pending ON hl7_inbox (state, urgent, id)")
    # The patient of an HL7 message, so a critical result finds the patient's queued ADT.
    await _add_missing_column(conn, scheme, "hl7_inbox", "patient_id", "TEXT")
    await conn.execute("CREATE INDEX IF NOT EXISTS hl7_inbox_patient ON hl7_inbox (patient_id, state)")
    # Alerts name their patient, so a transfer brings the new ward into open ones.
    await _add_missing_column(conn, scheme, "clinical_alert", "patient_id", "TEXT")


_CASES = [
    """CREATE TABLE IF NOT EXISTS clinical_case (
        case_id TEXT PRIMARY KEY, patient_id TEXT NOT NULL, patient_name TEXT NOT NULL,
        room_id TEXT NOT NULL UNIQUE, state TEXT NOT NULL, opened_by TEXT NOT NULL,
        opened_at BIGINT NOT NULL, closed_by TEXT, closed_at BIGINT, summary TEXT NOT NULL,
        archive TEXT, origin TEXT
    )""",
    # A consult order opens one case, however often the HIS sends it.
    "CREATE UNIQUE INDEX IF NOT EXISTS clinical_case_origin ON clinical_case (origin)",
]


def _clinical(statement: str, scheme: Scheme) -> str:
    if scheme != Scheme.POSTGRES:
        return statement.replace("BYTEA", "BLOB")
    return statement.replace("INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY")


async def _add_missing_column(conn: Connection, scheme: Scheme, table: str, column: str, declaration: str) -> None:
    if scheme == Scheme.POSTGRES:
        await conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {declaration}")
        return
    columns = {row["name"] for row in await conn.fetch(f"PRAGMA table_info({table})")}
    if column not in columns:
        await conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


@numbered("the tables as created before upgrades were numbered")
async def upgrade_v1(conn: Connection, scheme: Scheme) -> None:
    for statement in _ORG:
        await conn.execute(statement)
    for statement in _ONCALL:
        await conn.execute(statement)
    for table, column, declaration in _ONCALL_ADDED:
        await _add_missing_column(conn, scheme, table, column, declaration)
    for statement in _CLINICAL:
        await conn.execute(_clinical(statement, scheme))
    await _clinical_added(conn, scheme)
    for statement in _CASES:
        await conn.execute(statement)


# -- upgrade 2 -------------------------------------------------------------------------------


@numbered("an alert room made ahead for the next critical result with no ward")
async def upgrade_v2(conn: Connection, scheme: Scheme) -> None:
    await conn.execute("CREATE TABLE clinical_spare_alert_room (room_id TEXT PRIMARY KEY, made_at BIGINT NOT NULL)")


# -- upgrade 3 -------------------------------------------------------------------------------


@numbered("nurse-call device calls and the pages each opened")
async def upgrade_v3(conn: Connection, scheme: Scheme) -> None:
    await conn.execute(
        "CREATE TABLE device_call (call_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, kind TEXT NOT NULL, "
        "first_press BIGINT NOT NULL, last_press BIGINT NOT NULL, presses INTEGER NOT NULL, "
        "room_id TEXT, event_id TEXT)"
    )
    await conn.execute("CREATE INDEX device_call_latest ON device_call (device_id, first_press)")
    await conn.execute(
        "CREATE TABLE device_call_page (call_id TEXT NOT NULL, page_id TEXT NOT NULL, role TEXT NOT NULL, "
        "PRIMARY KEY (call_id, page_id))"
    )


# -- upgrade 4 -------------------------------------------------------------------------------


@numbered("the two-person room each pair of staff calls each other in; device calls in the order made")
async def upgrade_v4(conn: Connection, scheme: Scheme) -> None:
    await conn.execute(
        "CREATE TABLE call_room (user_a TEXT NOT NULL, user_b TEXT NOT NULL, room_id TEXT NOT NULL, "
        "PRIMARY KEY (user_a, user_b))"
    )
    # A device's latest call by when it was made (system time), not by the on-call clock,
    # which drills move back and forth. Calls made before this step keep their press time.
    await conn.execute("ALTER TABLE device_call ADD COLUMN made_at BIGINT NOT NULL DEFAULT 0")
    await conn.execute("UPDATE device_call SET made_at = first_press")
    await conn.execute("CREATE INDEX device_call_made ON device_call (device_id, made_at)")


# -- upgrade 5 -------------------------------------------------------------------------------


@numbered("voice messages accepted and not yet answered: kept across restarts")
async def upgrade_v5(conn: Connection, scheme: Scheme) -> None:
    # One row per voice message, written before the homeserver's transaction is answered.
    # ``content`` is the message's content as delivered (file URL and info; no words),
    # emptied once answered; ``attempts`` counts recognitions started that never returned (a
    # worker, or the appservice, died on it); ``problem`` is a notice decided but not yet sent.
    await conn.execute(
        "CREATE TABLE voice_job (event_id TEXT PRIMARY KEY, room_id TEXT NOT NULL, sender TEXT NOT NULL, "
        "content TEXT NOT NULL, received_at BIGINT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
        "problem TEXT, done_at BIGINT)"
    )
    await conn.execute("CREATE INDEX voice_job_pending ON voice_job (done_at, received_at)")


# -- upgrade 6 -------------------------------------------------------------------------------


@numbered("the event inbox: pages, acknowledgements and commands kept until handled; critical pages sent first")
async def upgrade_v6(conn: Connection, scheme: Scheme) -> None:
    # One row per delivered event the service acts on (appservice.inbox), written before the
    # homeserver's transaction is answered; ``id`` is the order of arrival. ``event`` is the
    # event as delivered, emptied once handled; ``resumes`` counts the starts that took it up
    # again. Done rows are kept a week by ID only, so a redelivery is recognised.
    await conn.execute(_clinical(
        "CREATE TABLE event_inbox (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, room_id TEXT NOT NULL, "
        "sender TEXT NOT NULL, kind TEXT NOT NULL, event TEXT NOT NULL, received_at BIGINT NOT NULL, "
        "resumes INTEGER NOT NULL DEFAULT 0, done_at BIGINT)",
        scheme,
    ))
    await conn.execute("CREATE INDEX event_inbox_pending ON event_inbox (done_at, id)")
    # Whether a reply or reaction is on the message that opened a page is asked before the
    # homeserver is answered; and the outbox reads its unsent sends on every flush.
    await conn.execute("CREATE INDEX oncall_page_event ON oncall_page (event_id)")
    await conn.execute("CREATE INDEX oncall_outbox_unsent ON oncall_outbox (sent, txn_id)")
