"""Audit trail throughput: appends per second and verify time, on SQLite and PostgreSQL.

Appends go through the same code the Synapse module uses (``append`` in one transaction,
committed), at batch size 1 (one record per transaction: a latency floor) and 50 (what a
module that batches a busy moment's records writes). Verify walks a log of ``--records``
records (1,000,000 by default) from a cold connection. SQLite is a file in a temp dir with
Synapse's settings (WAL, default synchronous); PostgreSQL is a throwaway database.

Targets: >= 500 records/s on SQLite, >= 2,000 records/s on PostgreSQL, verify of 1M < 60 s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from bench.stats import summary
from carematrix.audit import actions as A
from carematrix.audit.record import AuditRecord, now_us
from carematrix.audit.verify import verify
from carematrix.hsdb.audit_store import append
from carematrix.hsdb.migrations import upgrade
from carematrix_ops.audit_db import AuditDb, connect
from carematrix_ops.pgadmin import (
    create_database,
    database_url,
    drop_database,
    on_maintenance_db,
)
from tests.paths import REPO_ROOT
from tests.ports import TEST_SERVER_URL

_ACTIONS = (
    A.MESSAGE_SEND,
    A.MESSAGE_SEND,
    A.MESSAGE_SEND,
    A.MEDIA_DOWNLOAD,
    A.ROOM_MEMBER_JOIN,
    A.AUTH_LOGIN,
)


def realistic(i: int, t: int | None = None) -> AuditRecord:
    """A record shaped like the common ones: a staff member acting in a ward room."""
    action = _ACTIONS[i % len(_ACTIONS)]
    return AuditRecord(
        time=now_us() if t is None else t,
        actor=f"@d{1000 + i % 300}:hospital.example",
        action=action,
        object=f"$ev{i:010d}_abcdefghijklmnopqrstu:hospital.example",
        room=f"!ward{i % 40}_AbCdEfGhIjKlMnOp:hospital.example",
        patient=f"MRN-{i % 5000:07d}" if i % 3 == 0 else None,
        source=f"10.20.{i % 250}.{i % 200 + 1}",
        process=f"worker{i % 4}",
        details={"msgtype": "m.text", "encrypted": True}
        if action == A.MESSAGE_SEND
        else {"size": 1000 + i},
    )


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"




def appends(db: AuditDb, batch: int, batches: int, offset: int) -> dict[str, float]:
    """``batches`` transactions of ``batch`` records; per-transaction latency and records/s."""
    latencies = []
    start = time.perf_counter()
    for b in range(batches):
        records = [realistic(offset + b * batch + k) for k in range(batch)]
        t0 = time.perf_counter()
        with db.transaction() as txn:
            append(txn, db.dialect, records)
        latencies.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - start
    return {
        "batch": batch,
        **summary(latencies),
        "records_per_s": round(batch * batches / elapsed, 1),
    }


def _writer(url: str, worker: int, batches: int, ready) -> None:
    db = connect(url)
    ready.wait()  # every writer connected: start together
    for b in range(batches):
        with db.transaction() as txn:
            append(txn, db.dialect, [realistic(worker * 1_000_000 + b)])
    db.close()


def concurrent_appends(url: str, writers: int, batches: int) -> dict[str, float]:
    """Several processes (like Synapse workers) appending one record per transaction."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(writers + 1)
    procs = [ctx.Process(target=_writer, args=(url, w, batches, ready)) for w in range(writers)]
    for p in procs:
        p.start()
    ready.wait()
    start = time.perf_counter()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - start
    return {"writers": writers, "batch": 1, "records_per_s": round(writers * batches / elapsed, 1)}


def load(db: AuditDb, total: int, already: int) -> float:
    """Bring the log to ``total`` records with large batches (setup, not measured)."""
    start = time.perf_counter()
    base = now_us()
    for first in range(already, total, 5000):
        records = [realistic(i, base + i) for i in range(first, min(total, first + 5000))]
        with db.transaction() as txn:
            append(txn, db.dialect, records)
    return time.perf_counter() - start


def timed_verify(url: str) -> tuple[float, int, bool]:
    db = connect(url)  # a fresh connection: nothing cached in this process
    try:
        start = time.perf_counter()
        with db.transaction(read_only=True) as txn:
            result = verify(txn, db.dialect, {})
        return time.perf_counter() - start, result.count, result.ok
    finally:
        db.close()


def run_backend(name: str, url: str, args: argparse.Namespace) -> dict:
    db = connect(url)
    upgrade(db.transaction, db.dialect)
    out: dict = {"backend": name}
    out["batch_1"] = appends(db, 1, args.appends, 0)
    out["batch_50"] = appends(db, 50, args.batches, args.appends)
    written = args.appends + 50 * args.batches
    if name == "postgres":
        out["concurrent"] = concurrent_appends(url, args.writers, args.appends // args.writers)
        written += args.writers * (args.appends // args.writers)
    out["load_s"] = round(load(db, args.records, written), 1)
    db.close()
    seconds, count, ok = timed_verify(url)
    out["verify"] = {
        "records": count,
        "ok": ok,
        "seconds": round(seconds, 2),
        "records_per_s": round(count / seconds),
    }
    return out


def format_result(r: dict) -> str:
    b1, b50, v = r["batch_1"], r["batch_50"], r["verify"]
    lines = [
        f"audit trail on {r['backend']}:",
        f"  append, batch 1  : p50 {b1['p50_ms']:.2f} ms  p99 {b1['p99_ms']:.2f} ms  "
        f"{b1['records_per_s']:.0f} records/s ({b1['n']} transactions)",
        f"  append, batch 50 : p50 {b50['p50_ms']:.2f} ms  p99 {b50['p99_ms']:.2f} ms per batch  "
        f"{b50['records_per_s']:.0f} records/s",
    ]
    if "concurrent" in r:
        c = r["concurrent"]
        lines.append(
            f"  append, batch 1, {c['writers']} processes: {c['records_per_s']:.0f} records/s"
        )
    lines.append(
        f"  verify           : {v['records']:,} records in {v['seconds']:.1f} s "
        f"({v['records_per_s']:,} records/s) {'OK' if v['ok'] else 'FAILED'}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.audit")
    parser.add_argument("--records", type=int, default=1_000_000, help="log size for verify")
    parser.add_argument("--appends", type=int, default=2000, help="batch-1 transactions")
    parser.add_argument("--batches", type=int, default=200, help="batch-50 transactions")
    parser.add_argument("--writers", type=int, default=4, help="concurrent processes (PostgreSQL)")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "bench")
    args = parser.parse_args()
    results = []
    if args.backend in ("sqlite", "both"):
        work = Path(tempfile.mkdtemp(prefix="carematrix-audit-bench-"))
        try:
            results.append(run_backend("sqlite", str(work / "homeserver.db"), args))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(format_result(results[-1]), flush=True)
    if args.backend in ("postgres", "both"):
        dbname = f"carematrix_audit_bench_{secrets.token_hex(4)}"
        on_maintenance_db(TEST_SERVER_URL, create_database, dbname)
        try:
            results.append(run_backend("postgres", database_url(TEST_SERVER_URL, dbname), args))
        finally:
            on_maintenance_db(TEST_SERVER_URL, drop_database, dbname)
        print(format_result(results[-1]), flush=True)
    report = {"benchmark": "audit trail", "machine": machine(), "results": results}
    print(f"  machine: {report['machine']}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"audit-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"  saved {out}")


if __name__ == "__main__":
    main()
