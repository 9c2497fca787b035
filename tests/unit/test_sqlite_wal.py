"""Several processes opening one new SQLite file at once (workers, tools, the spool)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carematrix.hsdb.sqlite_wal import use_wal

# One opener: switches each file named on the command line to WAL, the n-th at the given start
# time plus n x 10 ms, and says which failed. Four run at once over the same new files, so
# they meet on each (without the retry, each opener failed on 9-15 of 200 files here).
_OPENER = """
import sqlite3, sys, time
from carematrix.hsdb.sqlite_wal import use_wal
start, failed = float(sys.argv[1]), []
for n, path in enumerate(sys.argv[2:]):
    while (left := start + n * 0.01 - time.time()) > 0:
        time.sleep(left)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        use_wal(conn, 30.0)
    except sqlite3.OperationalError as exc:
        failed.append(f"{path}: {exc}")
    finally:
        conn.close()
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_four_processes_switching_the_same_new_files_all_succeed(tmp_path: Path) -> None:
    # Without the retry, about one new file in 25 refused a connection "database is locked".
    # Processes, as in a deployment, not threads: four threads switching files at once once
    # deadlocked the test process itself (every thread waiting for the interpreter lock).
    paths = [str(tmp_path / f"new-{n}.db") for n in range(200)]
    start = str(time.time() + 2.0)  # all four started by then
    openers = [
        subprocess.Popen([sys.executable, "-c", _OPENER, start, *paths], stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[2])
        for _ in range(4)
    ]
    outcomes = [(opener.wait(timeout=300), opener.communicate()[0]) for opener in openers]
    assert outcomes == [(0, "\n")] * 4
    for path in paths:
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_error_other_than_a_lock_is_not_retried(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        use_wal(conn, 30.0)
