"""The PostgreSQL databases of a deployment: the URL, the databases Synapse and the
appservice need, and the database settings each is given."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlparse

from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.settings import Paths, Settings


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
    return ({"name": "psycopg2", "args": {**args, "cp_min": 2, "cp_max": 10}}, as_url)
