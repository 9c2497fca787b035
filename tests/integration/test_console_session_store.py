"""Console sessions in the homeserver database, on real SQLite and PostgreSQL: a session is
found by the hash of its cookie (the cookie itself is nowhere in the table), sign-out deletes
it, expired ones are purged, and a person's oldest sessions beyond the limit end."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from carematrix.console.sessions import from_row, new_session, to_row, token_hash
from carematrix.hsdb.console_session_store import (
    SESSIONS,
    delete,
    find,
    insert,
    purge_expired,
    touch,
)
from carematrix.hsdb.migrations import upgrade
from carematrix_ops.audit_db import AuditDb, connect

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
IDLE_MS = 30 * 60 * 1000


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


@pytest.fixture
def db(db_url: str) -> Iterator[AuditDb]:
    conn = connect(db_url)
    upgrade(conn.transaction, conn.dialect)
    yield conn
    conn.close()


def test_a_session_is_found_by_its_cookie_hash_and_sign_out_deletes_it(db):
    cookie, session = new_session("@n3002:x", T0, is_admin=False)
    with db.transaction() as txn:
        insert(txn, db.dialect, to_row(session), keep_per_user=20)
    with db.transaction(read_only=True) as txn:
        found = find(txn, db.dialect, token_hash(cookie))
        txn.execute(f"SELECT * FROM {SESSIONS}")
        stored = txn.fetchall()
    assert found is not None and from_row(found) == session
    assert not any(cookie in str(v) for row in stored for v in row)  # never the raw cookie
    with db.transaction() as txn:
        touch(txn, db.dialect, session.token_hash, ms(T0 + timedelta(minutes=5)))
    with db.transaction(read_only=True) as txn:
        again = find(txn, db.dialect, token_hash(cookie))
    assert again is not None and again.last_used_at == ms(T0 + timedelta(minutes=5))
    with db.transaction() as txn:
        assert delete(txn, db.dialect, session.token_hash)
        assert not delete(txn, db.dialect, session.token_hash)
    with db.transaction(read_only=True) as txn:
        assert find(txn, db.dialect, token_hash(cookie)) is None


def test_expired_sessions_are_purged_and_live_ones_kept(db):
    _, live = new_session("@a:x", T0)
    _, idle = new_session("@b:x", T0 - timedelta(hours=1))
    _, old = new_session("@c:x", T0 - timedelta(hours=13))
    old = replace(old, last_used=T0 - timedelta(minutes=1))  # in use, but past its 12 hours
    with db.transaction() as txn:
        for s in (live, idle, old):
            insert(txn, db.dialect, to_row(s), keep_per_user=20)
    with db.transaction() as txn:
        assert purge_expired(txn, db.dialect, ms(T0), IDLE_MS) == 2
    with db.transaction(read_only=True) as txn:
        assert find(txn, db.dialect, live.token_hash) is not None
        assert find(txn, db.dialect, idle.token_hash) is None and find(txn, db.dialect, old.token_hash) is None


def test_a_persons_oldest_sessions_past_the_limit_end(db):
    made = []
    for i in range(4):
        _, s = new_session("@n3001:x", T0 + timedelta(minutes=i))
        made.append(s)
        with db.transaction() as txn:
            insert(txn, db.dialect, to_row(s), keep_per_user=3)
    _, someone_else = new_session("@n3002:x", T0 - timedelta(hours=1))
    with db.transaction() as txn:
        insert(txn, db.dialect, to_row(someone_else), keep_per_user=3)
    with db.transaction(read_only=True) as txn:
        kept = [find(txn, db.dialect, s.token_hash) is not None for s in made]
        assert find(txn, db.dialect, someone_else.token_hash) is not None
    assert kept == [False, True, True, True]
