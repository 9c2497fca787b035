"""Switching an SQLite file of ours to write-ahead logging, when several processes open it at once.

WAL lets readers (the command-line tools, the syslog forwarder) go on while a writer commits.
The mode is kept in the file, so only the first switch of a new file changes anything; that
switch needs the file to itself, and SQLite refuses it at once ("database is locked"), without
calling the busy handler, while another connection is switching. Several processes starting
together on a new file did fail that way, so the switch is retried until a deadline."""

from __future__ import annotations

import sqlite3
import time


def use_wal(conn: sqlite3.Connection, wait_seconds: float) -> None:
    """Put ``conn``'s file in WAL mode, retrying a lock refusal for up to ``wait_seconds``."""
    deadline = time.monotonic() + wait_seconds
    pause = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)
