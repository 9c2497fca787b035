"""Signed-in operations-console sessions in the homeserver database (docs/console.md).

A session lives here rather than in one Synapse process's memory so that a restart does not
sign everyone out and any process (worker) that serves ``/_carematrix/console`` knows it. A
row is keyed by the SHA-256 of the browser's cookie value, never the value itself: someone
who reads the table (a backup, a database dump) cannot sign in with what they read. Times
are milliseconds since the epoch, like the other tables of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from carematrix.hsdb.audit_store import sql

SESSIONS = "carematrix_console_session"


@dataclass(frozen=True)
class StoredSession:
    token_hash: str  # hex SHA-256 of the cookie value
    user_id: str
    csrf: str  # the session's CSRF token (useless without the cookie it belongs to)
    is_admin: bool
    started_at: int
    last_used_at: int
    expires_at: int  # the end of its lifetime, whatever the use


_COLUMNS = "token_hash, user_id, csrf, is_admin, started_at, last_used_at, expires_at"


def insert(txn: Any, dialect: str, row: StoredSession, keep_per_user: int) -> None:
    """Store a new session; the person's oldest sessions beyond ``keep_per_user`` (this one
    included) end, so sign-ins that never sign out cannot grow the table without bound."""
    txn.execute(
        sql(f"INSERT INTO {SESSIONS} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", dialect),
        (row.token_hash, row.user_id, row.csrf, int(row.is_admin), row.started_at, row.last_used_at,
         row.expires_at),
    )
    txn.execute(
        sql(f"SELECT token_hash FROM {SESSIONS} WHERE user_id = ? ORDER BY started_at DESC, token_hash", dialect),
        (row.user_id,),
    )
    surplus = [r[0] for r in txn.fetchall()[keep_per_user:]]
    for token_hash in surplus:
        delete(txn, dialect, token_hash)


def find(txn: Any, dialect: str, token_hash: str) -> StoredSession | None:
    txn.execute(sql(f"SELECT {_COLUMNS} FROM {SESSIONS} WHERE token_hash = ?", dialect), (token_hash,))
    r = txn.fetchone()
    if r is None:
        return None
    return StoredSession(str(r[0]), str(r[1]), str(r[2]), bool(r[3]), int(r[4]), int(r[5]), int(r[6]))


def touch(txn: Any, dialect: str, token_hash: str, last_used_at: int) -> None:
    """Restart the session's idle clock."""
    txn.execute(sql(f"UPDATE {SESSIONS} SET last_used_at = ? WHERE token_hash = ?", dialect),
                (last_used_at, token_hash))


def delete(txn: Any, dialect: str, token_hash: str) -> bool:
    """End a session (sign-out, expiry); False if there was none."""
    txn.execute(sql(f"DELETE FROM {SESSIONS} WHERE token_hash = ?", dialect), (token_hash,))
    return bool(txn.rowcount)


def purge_expired(txn: Any, dialect: str, now: int, idle_ms: int) -> int:
    """Delete every session past its lifetime or unused for ``idle_ms``; how many."""
    txn.execute(
        sql(f"DELETE FROM {SESSIONS} WHERE expires_at <= ? OR last_used_at <= ?", dialect),
        (now, now - idle_ms),
    )
    return max(0, int(txn.rowcount))
