"""Real databases for the audit trail: an SQLite file per test, and one throwaway PostgreSQL
database per session (random name, C collation like Synapse's, dropped at the end) with a
fresh schema per test."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlparse

import psycopg2
import pytest
from psycopg2 import sql

from carematrix.audit.db import AuditDb, connect
from carematrix.audit.store import ensure_schema

PG_URL = os.environ.get("CAREMATRIX_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/")


def _pg_url(dbname: str, query: str = "") -> str:
    return urlparse(PG_URL)._replace(path="/" + dbname, query=query).geturl()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    name = f"carematrix_audit_test_{secrets.token_hex(4)}"
    admin = psycopg2.connect(_pg_url("postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE DATABASE {} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            ).format(sql.Identifier(name))
        )
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        admin.close()


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
    with db.transaction() as txn:
        ensure_schema(txn, db.dialect)
    yield db
    db.close()
