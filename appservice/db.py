"""The appservice database (mautrix's ``Database``, SQLite or PostgreSQL), for the stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import cast

from mautrix.util.async_db import Connection, Database


@asynccontextmanager
async def transaction(db: Database) -> AsyncIterator[Connection]:
    """One connection inside one transaction. (mautrix annotates ``acquire`` and
    ``transaction`` by what they yield, not as the context managers they are.)"""
    async with cast(AbstractAsyncContextManager[Connection], db.acquire()) as conn:
        async with cast(AbstractAsyncContextManager[None], conn.transaction()):
            yield conn
