"""The Synapse processes' schema gate: the tables are upgraded once per process, callers that
come meanwhile wait for that run, and a database newer than the code is refused for good
(with one CRITICAL line saying what to do), never written to."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twisted.internet import defer

from carematrix.hsdb import migrations
from synapse_modules.hs_schema import SchemaGate


class FakeApi:
    """run_db_interaction on an SQLite file, one transaction per call, as Synapse runs it;
    ``hold`` keeps the next calls pending until released, to have callers arrive meanwhile."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.calls: list[str] = []
        self.held: list[tuple[defer.Deferred, Callable[[], Any]]] | None = None

    def run_db_interaction(self, desc: str, func: Callable[..., Any], *args: Any) -> defer.Deferred:
        self.calls.append(desc)

        def run() -> Any:
            cur = self.conn.cursor()
            cur.execute("BEGIN")
            try:
                result = func(cur, *args)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
            return result

        if self.held is not None:
            d: defer.Deferred = defer.Deferred()
            self.held.append((d, run))
            return d
        return defer.maybeDeferred(run)

    def release(self) -> None:
        held, self.held = self.held or [], None
        for d, run in held:
            d.callback(run())

    def run_as_background_process(self, desc: str, func: Callable[[], Any]) -> defer.Deferred:
        return defer.ensureDeferred(func())


def ready(gate: SchemaGate) -> defer.Deferred:
    return defer.ensureDeferred(gate.ready())


def test_the_tables_are_upgraded_once_per_process(tmp_path):
    api = FakeApi(tmp_path / "homeserver.db")
    gate = SchemaGate(api, "sqlite")  # type: ignore[arg-type]
    gate.start()
    assert api.calls == ["carematrix_schema_prepare", "carematrix_schema_migrate"]
    assert ready(gate).called
    gate.start()
    assert len(api.calls) == 2
    cur = api.conn.cursor()
    assert migrations.current_version(cur, "sqlite") == migrations.LATEST


def test_callers_during_the_upgrade_wait_for_it(tmp_path):
    api = FakeApi(tmp_path / "homeserver.db")
    api.held = []
    gate = SchemaGate(api, "sqlite")  # type: ignore[arg-type]
    first, second = ready(gate), ready(gate)
    assert api.calls == ["carematrix_schema_prepare"]  # the second caller started no run of its own
    assert not first.called and not second.called
    api.release()
    assert first.called and second.called
    assert api.calls == ["carematrix_schema_prepare", "carematrix_schema_migrate"]


def test_a_newer_database_is_refused_for_good(tmp_path, caplog):
    api = FakeApi(tmp_path / "homeserver.db")
    cur = api.conn.cursor()
    migrations.upgrade(_transaction(api.conn), "sqlite")
    cur.execute(f"UPDATE {migrations.VERSION_TABLE} SET version = {migrations.LATEST + 1}")
    gate = SchemaGate(api, "sqlite")  # type: ignore[arg-type]
    with caplog.at_level(logging.CRITICAL, logger="synapse_modules.hs_schema"):
        gate.start()
    assert [r.getMessage() for r in caplog.records] == [
        f"CareMatrix cannot use this database: the homeserver database is at CareMatrix schema "
        f"version {migrations.LATEST + 1}, newer than this CareMatrix knows (version {migrations.LATEST}): "
        "a newer CareMatrix upgraded it. Run that version, or restore the database backup taken "
        "before the upgrade."
    ]
    calls = len(api.calls)
    failure = ready(gate)
    assert isinstance(failure.result.value, migrations.SchemaVersionError)
    failure.addErrback(lambda _: None)
    assert len(api.calls) == calls  # not tried again


def _transaction(conn: sqlite3.Connection) -> Callable[[], Any]:
    @contextmanager
    def transaction() -> Iterator[sqlite3.Cursor]:
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        yield cur
        cur.execute("COMMIT")

    return transaction
