"""Verify the whole audit log: chain, sequence, head row and signed checkpoints.

Rows are streamed in seq order in batches (memory stays flat at any size) and every link
is recomputed. The first problem stops the walk and is reported as a sentence an auditor
can act on, with the seq where it was found. Run it inside one consistent snapshot (the
connections from :mod:`carematrix_ops.audit_db` are) so appends that happen meanwhile are
simply not seen, rather than half seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from signedjson.types import VerifyKey

from carematrix.audit.checkpoint import Checkpoint, list_checkpoints, signature_problem
from carematrix.audit.walk import ChainWalker
from carematrix.hsdb.audit_store import check_dialect, head, iter_rows


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int  # records whose links checked out
    first_bad_seq: int | None
    problem: str | None
    last_seq: int  # the last record that checked out (0 if none)
    last_hash: str
    checkpoints: int  # signed checkpoints checked against the log

    def summary(self) -> str:
        if self.ok:
            return (
                f"audit log OK: {self.count} records, chain intact, "
                f"{self.checkpoints} signed checkpoints match"
            )
        return f"audit log FAILED at record {self.first_bad_seq}: {self.problem}"


def verify(
    txn: Any,
    dialect: str,
    verify_keys: Mapping[str, VerifyKey],
    extra_checkpoints: Iterable[Checkpoint] = (),
    batch: int = 10_000,
    progress: Callable[[int], None] | None = None,
) -> VerifyResult:
    """Check every record and checkpoint; ``verify_keys`` maps key ID to trusted key.

    ``extra_checkpoints`` are copies kept outside the database (syslog collector, printout):
    they catch truncation even when the checkpoint rows were deleted as well.
    ``progress`` is called with the number of records checked after each batch.
    """
    check_dialect(dialect)
    # Checkpoints first: anything signed before the walk starts must be covered by it.
    by_seq: dict[int, Checkpoint] = {}
    for cp in sorted([*list_checkpoints(txn, dialect), *extra_checkpoints], key=lambda c: c.seq):
        problem = signature_problem(cp, verify_keys)
        if problem:
            return _failed(ChainWalker(), cp.seq, problem, 0)
        other = by_seq.get(cp.seq)
        if other is not None and other.hash != cp.hash:
            return _failed(
                ChainWalker(),
                cp.seq,
                f"two validly signed checkpoints at record {cp.seq} disagree (log forked?)",
                0,
            )
        by_seq[cp.seq] = cp
    head_seq, head_hash = head(txn, dialect)
    walker = ChainWalker()
    matched = 0
    for row in iter_rows(txn, dialect, batch=batch):
        broken = walker.feed(row)
        if broken is not None:
            return _failed(walker, broken.seq, broken.problem, matched)
        seq = walker.last_seq
        signed = by_seq.get(seq)
        if signed is not None:
            if signed.hash != walker.last_hash:
                return _failed(
                    walker,
                    seq,
                    f"record {seq}: hash differs from the one signed in the checkpoint at "
                    f"{seq} (log rewritten since?)",
                    matched,
                )
            matched += 1
        if seq == head_seq and walker.last_hash != head_hash:
            return _failed(
                walker, seq, f"record {seq}: hash differs from the head row (head edited?)", matched
            )
        if progress is not None and seq % batch == 0:
            progress(seq)
    last = walker.last_seq
    latest_cp = max(by_seq, default=0)
    if latest_cp > last:
        return _failed(
            walker,
            last + 1,
            f"log ends at {last} but checkpoint at {latest_cp} was signed (truncated?)",
            matched,
        )
    if head_seq > last:
        return _failed(
            walker,
            last + 1,
            f"log ends at {last} but the head row says {head_seq} records were written "
            "(truncated?)",
            matched,
        )
    return VerifyResult(True, walker.count, None, None, last, walker.last_hash, matched)


def _failed(walker: ChainWalker, seq: int, problem: str, matched: int) -> VerifyResult:
    return VerifyResult(
        False, walker.count, seq, problem, walker.last_seq, walker.last_hash, matched
    )
