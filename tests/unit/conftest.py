"""The in-process homeservers of the Synapse adapter's guard tests (tests/synapse_inprocess.py):
one on SQLite, one on PostgreSQL, each started on first use and kept for the session; and an
HTTP session for the appservice clients talking to a stand-in homeserver
(tests/homeserver_stand_in.py)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.synapse_inprocess import Homeserver, start_homeserver, stop_reactor


@pytest.fixture(scope="session")
def _reactor() -> Iterator[None]:
    yield
    stop_reactor()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def homeserver(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, _reactor: None) -> Iterator[Homeserver]:
    root = tmp_path_factory.mktemp(f"inprocess-{request.param}")
    if request.param == "sqlite":
        hs = start_homeserver(root, "sqlite")
        yield hs
        hs.stop()
        return
    from carematrix_ops.deploy.postgres import parse_db_url
    from carematrix_ops.pgadmin import (
        create_database,
        database_url,
        drop_database,
        on_maintenance_db,
    )
    from tests.ports import TEST_SERVER_URL

    dbname = f"adapter_guard_{secrets.token_hex(4)}"
    try:
        on_maintenance_db(TEST_SERVER_URL, create_database, dbname)
    except Exception as exc:  # psycopg2.OperationalError: no server to test against
        pytest.skip(f"no PostgreSQL server at {TEST_SERVER_URL}: {exc}")
    hs = start_homeserver(root, "postgres", parse_db_url(database_url(TEST_SERVER_URL, dbname)))
    try:
        yield hs
    finally:
        hs.stop()
        on_maintenance_db(TEST_SERVER_URL, drop_database, dbname)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s
