"""Real databases for the audit trail: an SQLite file per test, and one throwaway PostgreSQL
database per session (random name, C collation like Synapse's, dropped at the end) with a
fresh schema per test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg2
import pytest
from psycopg2 import sql

from carematrix.hsdb.migrations import upgrade
from carematrix_ops.audit_db import AuditDb, connect
from carematrix_ops.pgadmin import (
    create_database,
    database_url,
    drop_database,
    on_maintenance_db,
)
from tests.ports import TEST_SERVER_URL


def _pg_url(dbname: str, query: str = "") -> str:
    return database_url(TEST_SERVER_URL, dbname, query)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    name = f"carematrix_audit_test_{secrets.token_hex(4)}"
    on_maintenance_db(TEST_SERVER_URL, create_database, name)
    try:
        yield name
    finally:
        on_maintenance_db(TEST_SERVER_URL, drop_database, name)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for an empty database of each kind; every connection to it sees the same tables."""
    if request.param == "sqlite":
        return str(tmp_path / "homeserver.db")
    dbname = request.getfixturevalue("pg_database")
    schema = f"t_{secrets.token_hex(6)}"
    conn = psycopg2.connect(_pg_url(dbname))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conn.close()
    return _pg_url(dbname, "options=" + quote(f"-c search_path={schema}"))


@pytest.fixture
def audit_db(db_url: str) -> Iterator[AuditDb]:
    db = connect(db_url)
    upgrade(db.transaction, db.dialect)
    yield db
    db.close()
