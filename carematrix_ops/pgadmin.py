"""Creating and dropping PostgreSQL databases the way Synapse needs them (UTF-8, C
collation): used by `carematrix up` and by the throwaway databases of tests and benchmarks."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse


def database_url(server_url: str, dbname: str, query: str = "") -> str:
    return urlparse(server_url)._replace(path="/" + dbname, query=query).geturl()


def create_database(cur: Any, dbname: str) -> None:
    """On an autocommit cursor of the ``postgres`` maintenance database."""
    from psycopg2 import sql

    cur.execute(
        sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
            sql.Identifier(dbname)
        )
    )


def drop_database(cur: Any, dbname: str) -> None:
    from psycopg2 import sql

    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def on_maintenance_db(server_url: str, action: Any, *dbnames: str) -> None:
    """Run ``action(cur, name)`` for each name on the server's ``postgres`` database."""
    import psycopg2

    conn = psycopg2.connect(database_url(server_url, "postgres"))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in dbnames:
                action(cur, name)
    finally:
        conn.close()
