"""Connections of our own to the homeserver database, for tools that run outside Synapse.

Inside Synapse the module uses Synapse's pool (``run_db_interaction``); the command-line
tools (verify, search, export), the syslog forwarder's catch-up, the tests and the
benchmark open the same database through here, with the same transaction semantics:
SQLite transactions start with ``BEGIN IMMEDIATE`` (the write lock up front) and wait up
to ``busy_timeout`` for another writer; PostgreSQL runs at REPEATABLE READ like Synapse.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carematrix.hsdb.audit_store import Dialect
from carematrix.hsdb.sqlite_wal import use_wal

SQLITE_BUSY_TIMEOUT_MS = 30_000


@dataclass
class AuditDb:
    """An open connection and its dialect; close it when done."""

    conn: Any
    dialect: Dialect

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self, read_only: bool = False) -> Iterator[Any]:
        """A cursor inside one transaction: committed on success, rolled back on error."""
        if self.dialect == "sqlite":
            cur = self.conn.cursor()
            cur.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")
            finally:
                cur.close()
        else:
            with self.conn.cursor() as cur:
                try:
                    yield cur
                except BaseException:
                    self.conn.rollback()
                    raise
                else:
                    self.conn.commit()

    def __enter__(self) -> AuditDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(target: str | Path) -> AuditDb:
    """Open ``postgresql://user@host:port/db`` or an SQLite file path (or ``sqlite:///`` URL).

    SQLite connections use WAL like Synapse does, so readers never block the homeserver.
    """
    text = str(target)
    if text.startswith(("postgres://", "postgresql://")):
        import psycopg2
        import psycopg2.extensions

        conn = psycopg2.connect(text)
        conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ)
        return AuditDb(conn, "postgres")
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") :]  # sqlite:////abs/path, sqlite:///relative
    lite = sqlite3.connect(text, isolation_level=None, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    lite.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    try:
        use_wal(lite, SQLITE_BUSY_TIMEOUT_MS / 1000)
    except BaseException:
        lite.close()
        raise
    return AuditDb(lite, "sqlite")

