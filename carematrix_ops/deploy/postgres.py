"""The PostgreSQL databases of a deployment: the URL, the databases Synapse and the
appservice need, and the database settings each is given."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlparse

from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.settings import Paths, Settings

# Connections each Synapse process keeps to PostgreSQL at most (Synapse's cp_max), and the
# appservice's (its asyncpg pool).
SYNAPSE_DB_CONNECTIONS = 10
APPSERVICE_DB_CONNECTIONS = 10


def parse_db_url(db_url: str) -> dict[str, Any]:
    url = urlparse(db_url)
    if url.scheme not in ("postgres", "postgresql") or not url.path.strip("/"):
        raise DeployError(
            f"--db-url must look like postgresql://user[:password]@host[:port]/dbname, got {db_url!r}"
        )
    args: dict[str, Any] = {
        "dbname": unquote(url.path.strip("/")),
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 5432,
        "user": unquote(url.username) if url.username else "postgres",
    }
    if url.password:
        args["password"] = unquote(url.password)
    return args


def prepare_postgres(db_url: str) -> dict[str, Any]:
    """Check that PostgreSQL answers, and create the databases Synapse and the appservice
    need (with the C collation Synapse requires) if they do not exist yet."""
    import psycopg2

    from carematrix_ops.pgadmin import create_database

    args = parse_db_url(db_url)
    where = f"{args['host']}:{args['port']}"
    admin_args = {**args, "dbname": "postgres", "connect_timeout": 5}
    try:
        conn = psycopg2.connect(**admin_args)
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
        raise DeployError(
            f"cannot reach PostgreSQL at {where} as {args['user']}: {first}; start it "
            "(e.g. pg_ctlcluster <version> main start) or pass the right --db-url"
        ) from exc
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for dbname in (args["dbname"], appservice_pg_dbname(args["dbname"])):
                cur.execute("SELECT datcollate, datctype FROM pg_database WHERE datname = %s", (dbname,))
                row = cur.fetchone()
                if row is None:
                    create_database(cur, dbname)
                elif dbname == args["dbname"] and (row[0] != "C" or row[1] != "C"):
                    raise DeployError(
                        f"PostgreSQL database {dbname} at {where} has collation {row[0]}/{row[1]}; "
                        "Synapse needs C: create it with LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
                    )
    except psycopg2.Error as exc:
        raise DeployError(f"PostgreSQL at {where} refused to prepare the databases: {exc}".strip()) from exc
    finally:
        conn.close()
    return args


def appservice_pg_dbname(synapse_dbname: str) -> str:
    return f"{synapse_dbname}_appservice"


def database_values(settings: Settings, paths: Paths) -> tuple[dict[str, Any], str]:
    if settings.database == "sqlite":
        return (
            {"name": "sqlite3", "args": {"database": str(paths.sqlite_db)}},
            f"sqlite:///{paths.appservice_db}",
        )
    if not settings.db_url:
        raise DeployError("--database postgres needs --db-url postgresql://user@host:5432/dbname")
    args = prepare_postgres(settings.db_url)
    as_url = urlparse(settings.db_url)._replace(path="/" + appservice_pg_dbname(args["dbname"])).geturl()
    return ({"name": "psycopg2", "args": {**args, "cp_min": 2, "cp_max": SYNAPSE_DB_CONNECTIONS}}, as_url)


def max_connections(db_url: str) -> int:
    """How many connections the PostgreSQL server at ``db_url`` accepts from ordinary users
    (max_connections less those reserved for superusers)."""
    import psycopg2

    args = parse_db_url(db_url)
    try:
        conn = psycopg2.connect(**{**args, "dbname": "postgres", "connect_timeout": 5})
    except psycopg2.OperationalError as exc:
        raise DeployError(f"cannot reach PostgreSQL at {args['host']}:{args['port']}: {exc}".strip()) from exc
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int")
            row = cur.fetchone()
            return int(row[0]) if row else 0
    finally:
        conn.close()


def check_connections(db_url: str, needed: int, why: str, hint: str) -> None:
    """Refuse a deployment whose processes could open more connections than PostgreSQL
    accepts: past its limit PostgreSQL refuses the next one, and the request that needed it
    fails with a 500 (a message not sent)."""
    accepted = max_connections(db_url)
    if accepted < needed:
        where = db_url.rsplit("@", 1)[-1]
        raise DeployError(
            f"PostgreSQL at {where} accepts {accepted} connections and {why} opens up to {needed}: raise "
            f"max_connections (leave room for the command-line tools) or {hint}"
        )
