"""Code the audit integration tests run in child processes (spawned, so it must be importable)."""

from __future__ import annotations

from carematrix.audit.record import AuditRecord
from carematrix.hsdb.audit_store import append
from carematrix_ops.audit_db import connect


def sample(i: int, actor: str = "@d1001:localhost", **overrides) -> AuditRecord:
    fields = {
        "actor": actor,
        "action": "message.send",
        "object": f"$event{i}:localhost",
        "room": "!ward:localhost",
        "process": "main",
        "source": "10.0.0.7",
        "details": {"msgtype": "m.text", "n": i},
        "time": 1_795_000_000_000_000 + i,
    }
    fields.update(overrides)
    return AuditRecord(**fields)


def append_worker(url: str, worker: int, batches: int, batch_size: int, start) -> list[int]:
    """Wait for the others, then append ``batches`` batches, each in its own transaction."""
    db = connect(url)
    start.wait()
    seqs: list[int] = []
    try:
        for b in range(batches):
            records = [
                sample(
                    b * batch_size + k,
                    actor=f"@worker{worker}:localhost",
                    process=f"worker{worker}",
                )
                for k in range(batch_size)
            ]
            with db.transaction() as txn:
                seqs += append(txn, db.dialect, records)
    finally:
        db.close()
    return seqs
