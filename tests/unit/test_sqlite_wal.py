"""Several processes opening one new SQLite file at once (workers, tools, the spool)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from carematrix.hsdb.sqlite_wal import use_wal


def _open_together(path: Path, count: int) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def open_one() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            barrier.wait(timeout=60)
            use_wal(conn, 30.0)
        except BaseException as exc:  # collected and reported by the test thread
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=open_one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def test_four_connections_switching_new_files_at_once_all_succeed(tmp_path):
    # Without the retry, about one new file in 25 refused a connection "database is locked".
    for round_ in range(200):
        path = tmp_path / f"new-{round_}.db"
        assert _open_together(path, 4) == []
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_error_other_than_a_lock_is_not_retried(tmp_path):
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        use_wal(conn, 30.0)
