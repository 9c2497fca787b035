"""The syslog spool file upgrades by numbered migration and keeps what it holds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from carematrix.hsdb.migrations import VERSION_TABLE, SchemaVersionError
from synapse_modules.audit_spool import Spool
from synapse_modules.audit_spool_migrations import SPOOL_MIGRATIONS


def version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()[0])


def test_a_new_spool_is_at_the_latest_version(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.close()
    assert version(tmp_path / "spool.db") == len(SPOOL_MIGRATIONS)


def test_a_spool_made_before_migrations_keeps_its_queue(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with sqlite3.connect(path) as db:  # what the spool created before its schema was numbered
        db.execute("CREATE TABLE spool (id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER, message BLOB NOT NULL)")
        db.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        db.execute("INSERT INTO spool (seq, message) VALUES (7, x'3c31333e')")
        db.execute("INSERT INTO state (key, value) VALUES ('high_seq', 7)")
    spool = Spool(path)
    try:
        assert spool.pending() == [(1, b"<13>")]
        assert spool.high_seq == 7
        assert spool.put([(7, b"again"), (8, b"next")]) == 1
    finally:
        spool.close()
    assert version(path) == len(SPOOL_MIGRATIONS)


def test_a_spool_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE {VERSION_TABLE} SET version = 99")
    with pytest.raises(SchemaVersionError, match="audit spool is at CareMatrix schema version 99"):
        Spool(path)
