"""The numbered migrations of our homeserver-database tables on real SQLite and PostgreSQL:
a fresh database gets every table at the latest version, a second run changes nothing, a
newer database is refused, and workers starting together take turns."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from carematrix.audit.chain import GENESIS_HASH
from carematrix.audit.checkpoint import export_verify_key, load_or_create_signing_key
from carematrix.hsdb import image_store
from carematrix.hsdb.audit_store import CHECKPOINT, HEAD, LOG, head, sql
from carematrix.hsdb.burn_store import BURN
from carematrix.hsdb.console_session_store import SESSIONS
from carematrix.hsdb.forward_store import ORIGIN_TABLE, TABLE
from carematrix.hsdb.image_store import BUCKET_TABLE, CROWDED_TABLE, IMAGE_TABLE
from carematrix.hsdb.media_store import DELIVERY, MEDIA
from carematrix.hsdb.migrations import (
    LATEST,
    MIGRATIONS,
    VERSION_TABLE,
    Migration,
    SchemaMismatch,
    SchemaVersionError,
    check_numbering,
    current_version,
    require_current,
    upgrade,
)
from carematrix.protect import perceptual
from carematrix_ops import cli
from carematrix_ops.audit_db import AuditDb, connect
from carematrix_ops.cli import common
from tests import image_corpus as corpus

STORE_TABLES = {LOG, HEAD, CHECKPOINT, TABLE, ORIGIN_TABLE, MEDIA, DELIVERY, BURN, IMAGE_TABLE, BUCKET_TABLE, CROWDED_TABLE, SESSIONS}


@pytest.fixture
def db(db_url: str):
    conn = connect(db_url)
    yield conn
    conn.close()


def tables(db: AuditDb) -> set[str]:
    with db.transaction(read_only=True) as txn:
        if db.dialect == "sqlite":
            txn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            txn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
        return {r[0] for r in txn.fetchall()}


def version(db: AuditDb) -> int:
    with db.transaction(read_only=True) as txn:
        return current_version(txn, db.dialect)


def set_version(db: AuditDb, n: int) -> None:
    with db.transaction() as txn:
        txn.execute(f"UPDATE {VERSION_TABLE} SET version = {n} WHERE id = 1")


def test_a_fresh_database_gets_every_table_at_the_latest_version(db):
    assert version(db) == 0
    assert upgrade(db.transaction, db.dialect) == (0, LATEST)
    assert STORE_TABLES | {VERSION_TABLE} <= tables(db)
    assert version(db) == LATEST
    with db.transaction(read_only=True) as txn:
        assert head(txn, db.dialect) == (0, GENESIS_HASH)
        require_current(txn, db.dialect)  # what the command-line tools check


def test_a_second_run_is_a_no_op(db):
    upgrade(db.transaction, db.dialect)
    with db.transaction() as txn:
        txn.execute(f"INSERT INTO {MEDIA} VALUES ('m1', '!r:x', '$e', 'image', 'audited', 1)")
        txn.execute(f"SELECT upgraded_at FROM {VERSION_TABLE}")
        stamped = txn.fetchone()[0]
    assert upgrade(db.transaction, db.dialect) == (LATEST, LATEST)
    with db.transaction(read_only=True) as txn:
        txn.execute(f"SELECT media_id FROM {MEDIA}")
        assert txn.fetchall() == [("m1",)]
        txn.execute(f"SELECT upgraded_at FROM {VERSION_TABLE}")
        assert txn.fetchone()[0] == stamped


def test_a_newer_database_is_refused_and_left_alone(db):
    upgrade(db.transaction, db.dialect)
    set_version(db, LATEST + 1)
    with pytest.raises(SchemaVersionError, match=f"version {LATEST + 1}, newer than this CareMatrix") as info:
        upgrade(db.transaction, db.dialect)
    assert "Run that version, or restore the database backup" in str(info.value)
    assert version(db) == LATEST + 1
    with db.transaction(read_only=True) as txn, pytest.raises(SchemaVersionError, match="newer"):
        require_current(txn, db.dialect)


def test_tools_refuse_a_database_not_yet_upgraded(db):
    with db.transaction(read_only=True) as txn, pytest.raises(SchemaVersionError) as info:
        require_current(txn, db.dialect)
    assert "no CareMatrix schema version yet" in str(info.value)
    assert "Start the homeserver with this version once" in str(info.value)


def test_later_migrations_run_once_in_order(db):
    upgrade(db.transaction, db.dialect)
    ran: list[int] = []

    def add_note(txn: Any, dialect: str) -> None:
        ran.append(LATEST + 1)
        txn.execute(f"ALTER TABLE {BURN} ADD COLUMN note TEXT")

    def fill_note(txn: Any, dialect: str) -> None:
        ran.append(LATEST + 2)
        txn.execute(f"UPDATE {BURN} SET note = 'x'")

    later = (*MIGRATIONS, Migration(LATEST + 1, "a note", add_note), Migration(LATEST + 2, "fill it", fill_note))
    assert upgrade(db.transaction, db.dialect, later) == (LATEST, LATEST + 2)
    assert upgrade(db.transaction, db.dialect, later) == (LATEST + 2, LATEST + 2)
    assert ran == [LATEST + 1, LATEST + 2]
    with db.transaction(read_only=True) as txn:
        txn.execute(f"SELECT note FROM {BURN}")
        assert txn.fetchall() == []


def test_a_failing_migration_changes_nothing(db):
    upgrade(db.transaction, db.dialect)

    def half_done(txn: Any, dialect: str) -> None:
        txn.execute("CREATE TABLE carematrix_half (x INTEGER)")
        raise RuntimeError("step failed")

    with pytest.raises(RuntimeError, match="step failed"):
        upgrade(db.transaction, db.dialect, (*MIGRATIONS, Migration(LATEST + 1, "broken", half_done)))
    assert version(db) == LATEST
    assert "carematrix_half" not in tables(db)


def test_migrations_are_numbered_without_gaps():
    check_numbering(MIGRATIONS)
    with pytest.raises(ValueError, match="numbered 1..n"):
        check_numbering((*MIGRATIONS, Migration(LATEST + 2, "skips one", lambda txn, d: None)))


def test_a_foreign_table_under_our_name_is_not_adopted(db):
    with db.transaction() as txn:
        txn.execute(f"CREATE TABLE {BURN} (event_id TEXT PRIMARY KEY)")
    with pytest.raises(SchemaMismatch, match=f"{BURN} exists but lacks columns"):
        upgrade(db.transaction, db.dialect)
    assert version(db) == 0


def test_workers_starting_together_take_turns(db_url):
    """Several processes' first start against an empty database all succeed, and the
    migrations run once."""
    errors: list[BaseException] = []
    results: list[tuple[int, int]] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        conn = None
        try:
            # Opening belongs to the start too: four connections switching a new SQLite
            # file to WAL at once once failed with "database is locked".
            conn = connect(db_url)
            barrier.wait(timeout=120)
            results.append(upgrade(conn.transaction, conn.dialect))
        except BaseException as exc:  # collected and reported by the test thread
            errors.append(exc)
            barrier.abort()  # the others stop waiting for a start that will not come
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a start never finished"
    assert errors == []
    assert sorted(results) == [(0, LATEST)] + [(LATEST, LATEST)] * 3


def test_audit_verify_says_when_the_database_is_older_or_newer_than_the_code(db_url, tmp_path, capsys):
    """``carematrix audit verify`` reads our tables directly: it names the mismatch instead of
    failing on a missing table or misreading a changed one."""
    kind = "sqlite" if not db_url.startswith("postgresql://") else "postgres"
    data_dir = tmp_path / "var"
    (data_dir / "synapse").mkdir(parents=True)
    settings = {"data_dir": str(data_dir), "database": kind}
    if kind == "postgres":
        settings["db_url"] = db_url
    else:
        db_url = str(data_dir / "synapse" / "homeserver.db")
    (data_dir / "deployment.json").write_text(json.dumps(settings))
    (data_dir / "secrets.json").write_text("{}")
    (data_dir / "audit_verify.key").write_text(export_verify_key(load_or_create_signing_key(tmp_path / "k")) + "\n")
    verify_cmd = ["audit", "verify", "--data-dir", str(data_dir)]

    with connect(db_url) as db:
        with db.transaction() as txn:  # the homeserver has not run this code yet
            txn.execute("CREATE TABLE carematrix_audit_head (id INTEGER PRIMARY KEY, seq BIGINT, hash TEXT)")
        assert cli.main(verify_cmd) == common.EXIT_FAILED
        assert "no CareMatrix schema version yet" in capsys.readouterr().err

        upgrade(db.transaction, db.dialect)
        assert cli.main(verify_cmd) == common.EXIT_OK
        assert "audit log OK: 0 records" in capsys.readouterr().out

        set_version(db, LATEST + 1)
        assert cli.main(verify_cmd) == common.EXIT_FAILED
        err = capsys.readouterr().err
        assert f"error: the homeserver database is at CareMatrix schema version {LATEST + 1}, newer" in err


def test_migration_5_marks_the_crowded_buckets_of_a_version_4_database_and_keeps_the_rest(db):
    """Rows as the version-4 code filed them (every bucket kept, however crowded): after the
    upgrade the bucket 40 images share is marked and its rows are gone; a bucket 5 images
    share, every image and its features are untouched."""
    assert upgrade(db.transaction, db.dialect, MIGRATIONS[:4]) == (0, 4)
    crowded_bucket, quiet_bucket = 7 << 24 | 12345, 3 << 24 | 99
    with db.transaction() as txn:
        for n in range(40):
            txn.execute(
                sql(f"INSERT INTO {IMAGE_TABLE} (id, room_id, event_id, media_id, features, ts) VALUES (?, ?, ?, ?, ?, ?)",
                    db.dialect),
                (n, "!ward:hs", f"$e{n}", f"m{n}", _blob(db.dialect, bytes([n]) * 8), n),
            )
            txn.execute(sql(f"INSERT INTO {BUCKET_TABLE} (bucket, image) VALUES (?, ?)", db.dialect), (crowded_bucket, n))
            if n < 5:
                txn.execute(sql(f"INSERT INTO {BUCKET_TABLE} (bucket, image) VALUES (?, ?)", db.dialect), (quiet_bucket, n))
    assert upgrade(db.transaction, db.dialect, MIGRATIONS[:5]) == (4, 5)
    with db.transaction(read_only=True) as txn:
        txn.execute(f"SELECT bucket FROM {CROWDED_TABLE}")
        assert [r[0] for r in txn.fetchall()] == [crowded_bucket]
        txn.execute(f"SELECT bucket, image FROM {BUCKET_TABLE} ORDER BY image")
        assert [tuple(r) for r in txn.fetchall()] == [(quiet_bucket, n) for n in range(5)]
        txn.execute(f"SELECT id, media_id, features FROM {IMAGE_TABLE} ORDER BY id")
        assert [(r[0], r[1], bytes(r[2])) for r in txn.fetchall()] == [(n, f"m{n}", bytes([n]) * 8) for n in range(40)]


def test_migration_6_drops_the_fourth_lookup_table_and_keeps_the_other_three(db):
    """A version-5 database filed each feature under four tables (the table number above 24
    bits of bucket): after the upgrade, table 3's index rows and crowded marks are gone, the
    rows and marks of tables 0-2 and every image are untouched."""
    assert upgrade(db.transaction, db.dialect, MIGRATIONS[:5]) == (0, 5)
    rows = [(table << 24 | bucket, image) for table in range(4) for bucket in (0, 777, (1 << 24) - 1) for image in (1, 2)]
    marks = [table << 24 | 4242 for table in range(4)]
    with db.transaction() as txn:
        for image in (1, 2):
            txn.execute(
                sql(f"INSERT INTO {IMAGE_TABLE} (id, room_id, event_id, media_id, features, ts) VALUES (?, ?, ?, ?, ?, ?)",
                    db.dialect),
                (image, "!ward:hs", f"$e{image}", f"m{image}", _blob(db.dialect, b"features"), image),
            )
        for row in rows:
            txn.execute(sql(f"INSERT INTO {BUCKET_TABLE} (bucket, image) VALUES (?, ?)", db.dialect), row)
        for mark in marks:
            txn.execute(sql(f"INSERT INTO {CROWDED_TABLE} (bucket) VALUES (?)", db.dialect), (mark,))
    assert upgrade(db.transaction, db.dialect) == (5, LATEST)
    with db.transaction(read_only=True) as txn:
        txn.execute(f"SELECT bucket, image FROM {BUCKET_TABLE} ORDER BY bucket, image")
        assert [tuple(r) for r in txn.fetchall()] == sorted(r for r in rows if r[0] >> 24 < 3)
        txn.execute(f"SELECT bucket FROM {CROWDED_TABLE} ORDER BY bucket")
        assert [r[0] for r in txn.fetchall()] == marks[:3]
        txn.execute(f"SELECT id FROM {IMAGE_TABLE} ORDER BY id")
        assert [r[0] for r in txn.fetchall()] == [1, 2]


def test_an_image_filed_under_four_tables_is_found_after_migration_6(db):
    """A protected chest film filed by the version-5 code (its keys in tables 0-2, which did
    not change, and in table 3): a re-encoded, scaled copy is still shortlisted afterwards."""
    assert upgrade(db.transaction, db.dialect, MIGRATIONS[:5]) == (0, 5)
    film = corpus.chest_film(3)
    features = perceptual.protected_features(corpus.encode(film))
    kept = perceptual.indexed_keys(features).tolist()
    table_3 = [3 << 24 | (key & ((1 << 24) - 1)) for key in kept if key >> 24 == 0]
    ident = image_store.image_id("$film", "filmMEDIA")
    with db.transaction() as txn:
        txn.execute(
            sql(f"INSERT INTO {IMAGE_TABLE} (id, room_id, event_id, media_id, features, ts) VALUES (?, ?, ?, ?, ?, ?)",
                db.dialect),
            (ident, "!ward:hs", "$film", "filmMEDIA", _blob(db.dialect, image_store.pack(features)), 1),
        )
        for key in kept + table_3:
            txn.execute(sql(f"INSERT INTO {BUCKET_TABLE} (bucket, image) VALUES (?, ?)", db.dialect), (key, ident))
    assert upgrade(db.transaction, db.dialect) == (5, LATEST)
    views = perceptual.candidate_views(corpus.jpeg(corpus.resized(film, 0.7), 80))
    with db.transaction(read_only=True) as txn:
        txn.execute(f"SELECT count(*) FROM {BUCKET_TABLE}")
        assert txn.fetchone()[0] == len(kept)
        found = image_store.shortlisted(txn, db.dialect, views, "!dm:hs")
    assert [f.event_id for f in found][:1] == ["$film"]


def _blob(dialect: str, value: bytes) -> Any:
    if dialect == "postgres":
        import psycopg2

        return psycopg2.Binary(value)
    return value
