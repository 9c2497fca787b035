"""The audit chain on real SQLite and PostgreSQL: append, verify, and every kind of tampering
an auditor must be told about, with the record where it happened."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from carematrix.audit.chain import GENESIS_HASH, canonical, link_hash
from carematrix.audit.checkpoint import (
    AuditChainBroken,
    Checkpoint,
    export_verify_key,
    list_checkpoints,
    load_or_create_signing_key,
    load_verify_keys,
    make_checkpoint,
)
from carematrix.audit.verify import verify
from carematrix.hsdb.audit_store import append, head, row_fields, sql
from carematrix.hsdb.migrations import upgrade
from carematrix_ops.audit_db import AuditDb, connect
from tests.integration.audit_workers import append_worker, sample


@pytest.fixture
def signing_key(tmp_path: Path):
    return load_or_create_signing_key(tmp_path / "audit_signing.key")


@pytest.fixture
def keys(signing_key):
    return load_verify_keys([export_verify_key(signing_key)])


def fill(db: AuditDb, n: int, batch: int = 10) -> list[int]:
    seqs: list[int] = []
    for start in range(0, n, batch):
        with db.transaction() as txn:
            seqs += append(
                txn, db.dialect, [sample(i) for i in range(start, min(n, start + batch))]
            )
    return seqs


def tamper(db: AuditDb, statement: str, *args) -> None:
    with db.transaction() as txn:
        txn.execute(sql(statement, db.dialect), args)


def check(db: AuditDb, keys, **kw):
    with db.transaction(read_only=True) as txn:
        return verify(txn, db.dialect, keys, **kw)


def checkpoint(db: AuditDb, signing_key) -> Checkpoint:
    with db.transaction() as txn:
        return make_checkpoint(txn, db.dialect, signing_key)


def test_appended_records_verify(audit_db, keys):
    seqs = fill(audit_db, 120, batch=50)
    assert seqs == list(range(1, 121))
    result = check(audit_db, keys)
    assert result.ok, result.problem
    assert result.count == 120
    with audit_db.transaction(read_only=True) as txn:
        assert head(txn, audit_db.dialect) == (120, result.last_hash)


def test_empty_log_verifies(audit_db, keys):
    result = check(audit_db, keys)
    assert result.ok and result.count == 0 and result.last_hash == GENESIS_HASH


def test_stored_hash_is_the_documented_formula(audit_db):
    """An outside auditor can recompute row 1 from its columns with plain SHA-256."""
    fill(audit_db, 2)
    with audit_db.transaction(read_only=True) as txn:
        txn.execute("SELECT prev_hash, hash FROM carematrix_audit_log WHERE seq = 1")
        prev, digest = txn.fetchone()
    assert prev == GENESIS_HASH
    assert digest == link_hash(GENESIS_HASH, canonical(sample(0)), 1)


def test_edited_actor_is_reported_at_that_record(audit_db, keys):
    fill(audit_db, 60)
    tamper(
        audit_db,
        "UPDATE carematrix_audit_log SET actor = ? WHERE seq = ?",
        "@someone-else:localhost",
        37,
    )
    result = check(audit_db, keys)
    assert not result.ok
    assert result.first_bad_seq == 37
    assert result.problem == "record 37: hash does not match its content (edited?)"
    assert result.count == 36


def test_edited_details_are_reported(audit_db, keys):
    fill(audit_db, 10)
    tamper(
        audit_db,
        "UPDATE carematrix_audit_log SET details = ? WHERE seq = ?",
        '{"msgtype":"m.text","n":99}',
        4,
    )
    result = check(audit_db, keys)
    assert (result.ok, result.first_bad_seq) == (False, 4)


def test_deleted_middle_record_is_reported_missing(audit_db, keys):
    fill(audit_db, 60)
    tamper(audit_db, "DELETE FROM carematrix_audit_log WHERE seq = ?", 25)
    result = check(audit_db, keys)
    assert (result.ok, result.first_bad_seq) == (False, 25)
    assert result.problem == "record 25 is missing (deleted?)"


def test_deleted_tail_after_checkpoint_is_truncation(audit_db, signing_key, keys):
    fill(audit_db, 50)
    cp = checkpoint(audit_db, signing_key)
    assert cp.seq == 50
    fill(audit_db, 10)
    # The intruder removes records 41..60 and winds the head back so it looks consistent.
    with audit_db.transaction() as txn:
        txn.execute(
            sql("SELECT hash FROM carematrix_audit_log WHERE seq = ?", audit_db.dialect), (40,)
        )
        (hash40,) = txn.fetchone()
    tamper(audit_db, "DELETE FROM carematrix_audit_log WHERE seq > ?", 40)
    tamper(audit_db, "UPDATE carematrix_audit_head SET seq = ?, hash = ? WHERE id = 1", 40, hash40)
    result = check(audit_db, keys)
    assert not result.ok
    assert result.problem == "log ends at 40 but checkpoint at 50 was signed (truncated?)"
    assert result.first_bad_seq == 41
    assert result.count == 40


def test_deleted_tail_without_checkpoint_is_caught_by_the_head(audit_db, keys):
    fill(audit_db, 30)
    tamper(audit_db, "DELETE FROM carematrix_audit_log WHERE seq > ?", 27)
    result = check(audit_db, keys)
    assert (result.ok, result.first_bad_seq) == (False, 28)
    assert "log ends at 27 but the head row says 30" in result.problem


def test_checkpoint_copy_kept_elsewhere_catches_total_cover_up(audit_db, signing_key, keys):
    fill(audit_db, 20)
    off_site = checkpoint(audit_db, signing_key).to_json()  # e.g. what the syslog collector got
    with audit_db.transaction() as txn:
        txn.execute(
            sql("SELECT hash FROM carematrix_audit_log WHERE seq = ?", audit_db.dialect), (15,)
        )
        (hash15,) = txn.fetchone()
    tamper(audit_db, "DELETE FROM carematrix_audit_log WHERE seq > ?", 15)
    tamper(audit_db, "UPDATE carematrix_audit_head SET seq = ?, hash = ? WHERE id = 1", 15, hash15)
    tamper(audit_db, "DELETE FROM carematrix_audit_checkpoint")
    assert check(audit_db, keys).ok  # the database alone can no longer tell
    result = check(audit_db, keys, extra_checkpoints=[Checkpoint.from_json(off_site)])
    assert not result.ok
    assert result.problem == "log ends at 15 but checkpoint at 20 was signed (truncated?)"


def test_rewritten_and_rehashed_history_contradicts_the_checkpoint(audit_db, signing_key, keys):
    """Editing a record and recomputing every later hash yields a valid-looking chain; the
    signed checkpoint still remembers the old hash."""
    fill(audit_db, 12)
    checkpoint(audit_db, signing_key)
    dialect = audit_db.dialect
    with audit_db.transaction() as txn:
        txn.execute(
            "SELECT seq, recorded_at, actor, action, object, room, patient, outcome, source, "
            "process, rule, details FROM carematrix_audit_log ORDER BY seq"
        )
        rows = txn.fetchall()
        prev = GENESIS_HASH
        for row in rows:
            full = (*row, None, None)
            fields = row_fields(full)
            if row[0] == 3:
                fields["actor"] = "@rewritten:localhost"
            digest = link_hash(prev, canonical(fields), row[0])
            txn.execute(
                sql(
                    "UPDATE carematrix_audit_log SET actor = ?, prev_hash = ?, hash = ? "
                    "WHERE seq = ?",
                    dialect,
                ),
                (fields["actor"], prev, digest, row[0]),
            )
            prev = digest
        txn.execute(sql("UPDATE carematrix_audit_head SET hash = ? WHERE id = 1", dialect), (prev,))
    result = check(audit_db, keys)
    assert (result.ok, result.first_bad_seq) == (False, 12)
    assert "differs from the one signed in the checkpoint" in result.problem


def test_forged_checkpoint_signature_is_reported(audit_db, signing_key, keys):
    fill(audit_db, 8)
    checkpoint(audit_db, signing_key)
    fill(audit_db, 4)
    tamper(audit_db, "UPDATE carematrix_audit_checkpoint SET seq = ? WHERE seq = ?", 5, 8)
    result = check(audit_db, keys)
    assert not result.ok
    assert result.problem == "checkpoint at record 5 has a bad signature (forged or edited?)"


def test_checkpoint_by_unknown_key_is_reported(audit_db, tmp_path, keys):
    fill(audit_db, 3)
    checkpoint(audit_db, load_or_create_signing_key(tmp_path / "other.key"))
    result = check(audit_db, keys)
    assert not result.ok and "not a trusted audit verify key" in result.problem


def test_checkpoints_are_idempotent_and_refuse_to_sign_a_broken_log(audit_db, signing_key, keys):
    with audit_db.transaction() as txn:
        assert make_checkpoint(txn, audit_db.dialect, signing_key) is None  # empty log
    fill(audit_db, 10)
    first = checkpoint(audit_db, signing_key)
    assert checkpoint(audit_db, signing_key) == first
    fill(audit_db, 5)
    tamper(audit_db, "UPDATE carematrix_audit_log SET outcome = ? WHERE seq = ?", "failure", 13)
    with pytest.raises(AuditChainBroken) as err, audit_db.transaction() as txn:
        make_checkpoint(txn, audit_db.dialect, signing_key)
    assert err.value.seq == 13
    with audit_db.transaction(read_only=True) as txn:
        assert [c.seq for c in list_checkpoints(txn, audit_db.dialect)] == [10]


def test_concurrent_appends_from_processes_form_one_chain(db_url, audit_db, keys):
    """Four processes, each with its own connection (REPEATABLE READ on PostgreSQL, like
    Synapse), append at once: one gap-free chain, every record present, each writer's
    records in its own order."""
    workers, batches, size = 4, 15, 5
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Manager().Event()
    with ctx.Pool(workers) as pool:
        pending = [
            pool.apply_async(append_worker, (db_url, w, batches, size, start))
            for w in range(workers)
        ]
        start.set()
        per_worker = [p.get(timeout=120) for p in pending]
    all_seqs = sorted(s for seqs in per_worker for s in seqs)
    assert all_seqs == list(range(1, workers * batches * size + 1))
    for seqs in per_worker:
        assert seqs == sorted(seqs)
    result = check(audit_db, keys)
    assert result.ok, result.problem
    assert result.count == workers * batches * size
    # A batch is atomic: its records sit next to each other in the chain.
    for seqs in per_worker:
        for k in range(0, len(seqs), size):
            assert seqs[k : k + size] == list(range(seqs[k], seqs[k] + size))
    with audit_db.transaction(read_only=True) as txn:
        txn.execute(
            "SELECT actor, count(*) FROM carematrix_audit_log GROUP BY actor ORDER BY actor"
        )
        counts = txn.fetchall()
    assert counts == [(f"@worker{w}:localhost", batches * size) for w in range(workers)]


def test_a_rolled_back_append_leaves_no_trace(audit_db, keys):
    fill(audit_db, 3)
    with pytest.raises(RuntimeError), audit_db.transaction() as txn:
        append(txn, audit_db.dialect, [sample(99)])
        raise RuntimeError("the event it describes failed to persist")
    assert fill(audit_db, 1) == [4]
    assert check(audit_db, keys).count == 4


def test_connect_accepts_a_sqlite_url(tmp_path):
    with connect(f"sqlite:///{tmp_path}/a.db") as db:
        upgrade(db.transaction, db.dialect)
    assert (tmp_path / "a.db").exists()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_transaction_that_reads_first_and_then_appends_waits_for_the_lock_instead_of_failing(
    db_url, audit_db, keys
):
    """The no-forward check reads its tables and then writes the message's audit record in the
    same transaction. Taking the append lock first makes a concurrent append wait, where a
    snapshot taken by the earlier reads would make PostgreSQL refuse it (serialization
    failure: under load Synapse's retries ran out and messages were refused). PostgreSQL's
    case: SQLite has one writer at a time and no snapshot to go stale."""
    import threading

    from carematrix.hsdb.audit_store import lock_for_append

    fill(audit_db, 1)
    other = connect(db_url)
    try:
        with audit_db.transaction() as first:
            lock_for_append(first, audit_db.dialect)
            first.execute(sql("SELECT COUNT(*) FROM carematrix_audit_log", audit_db.dialect))
            done: list[list[int]] = []

            def second_appender() -> None:
                with other.transaction() as second:
                    lock_for_append(second, other.dialect)
                    second.execute(sql("SELECT COUNT(*) FROM carematrix_audit_log", other.dialect))
                    done.append(append(second, other.dialect, [sample(2)]))

            waiter = threading.Thread(target=second_appender)
            waiter.start()
            waiter.join(timeout=1.0)
            assert waiter.is_alive(), "the second appender did not wait for the lock"
            append(first, audit_db.dialect, [sample(1)])
        waiter.join(timeout=60)
        assert not waiter.is_alive() and done == [[3]], done
    finally:
        other.close()
    result = check(audit_db, keys)
    assert result.ok, result.summary()
