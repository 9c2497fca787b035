"""Columns added to an appservice table after its first release, on SQLite and PostgreSQL
alike (until the stores move to numbered migrations)."""

from __future__ import annotations

from mautrix.util.async_db import Database


async def add_missing_column(db: Database, table: str, column: str, declaration: str) -> None:
    if db.scheme == "postgres":
        await db.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {declaration}")
        return
    columns = {row["name"] for row in await db.fetch(f"PRAGMA table_info({table})")}
    if column not in columns:
        await db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
