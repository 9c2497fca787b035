"""Group commit of audit records into the homeserver database.

Records that must exist before an action is acknowledged (an accepted message, a policy
denial) are awaited: the caller resumes only once its record is committed. Records
arriving together share one transaction, so the audit costs one short write per burst
rather than one per action. Every Synapse process (worker) writes through the same
head-row lock, which gives one verifiable order (see docs/audit.md).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar

from synapse.module_api import ModuleApi, make_deferred_yieldable
from twisted.internet import defer

from carematrix.audit.record import AuditRecord
from carematrix.hsdb.audit_store import append
from synapse_modules import hs_schema
from synapse_modules.adapter.logging_context import resume

log = logging.getLogger(__name__)

MAX_BATCH = 500

_writer: AuditWriter | None = None
_held: ContextVar[list[AuditRecord] | None] = ContextVar("carematrix_audit_held", default=None)


@contextlib.contextmanager
def held_records() -> Iterator[list[AuditRecord]]:
    """Records made in this context are kept in the yielded list instead of being written
    one by one: while a batch of events is built (each event's record is made as it is
    built), so that the caller writes them all in one transaction with ``record_many``
    before it stores the batch."""
    held: list[AuditRecord] = []
    token = _held.set(held)
    try:
        yield held
    finally:
        _held.reset(token)


def current_writer() -> AuditWriter | None:
    """The process's writer, if the audit module is loaded (other modules record through it)."""
    return _writer


class AuditWriter:
    def __init__(self, api: ModuleApi, dialect: str, process: str) -> None:
        global _writer
        self._api = api
        self.dialect = dialect
        self.process = process
        self._pending: list[tuple[AuditRecord, defer.Deferred | None]] = []
        self._flushing = False
        self._schema = hs_schema.gate(api)
        self.failures = 0
        _writer = self

    async def ready(self) -> None:
        """The audit tables are at the code's version (for callers that append inside their
        own transaction)."""
        await self._schema.ready()

    def append_in(self, txn: object, records: list[AuditRecord]) -> None:
        """Append inside a caller's transaction (after ``ready``): the records commit with
        whatever that transaction stores, in the same chain, with no extra round trip."""
        append(txn, self.dialect, records)

    async def record(self, record: AuditRecord) -> None:
        """Return once ``record`` is committed (or held, see ``held_records``); raises if it
        could not be written."""
        held = _held.get()
        if held is not None:
            held.append(record)
            return
        done: defer.Deferred = defer.Deferred()
        self._pending.append((record, done))
        self._kick()
        await make_deferred_yieldable(done)

    async def record_many(self, records: list[AuditRecord]) -> None:
        """Return once all of ``records`` are committed, in order; raises if any could not be."""
        waits: list[defer.Deferred] = []
        for record in records:
            done: defer.Deferred = defer.Deferred()
            self._pending.append((record, done))
            waits.append(done)
        if not waits:
            return
        self._kick()
        await make_deferred_yieldable(defer.gatherResults(waits, consumeErrors=True))

    def record_soon(self, record: AuditRecord) -> None:
        """Queue ``record`` without waiting (for observations made after the fact)."""
        self._pending.append((record, None))
        self._kick()

    def _kick(self) -> None:
        if not self._flushing:
            self._flushing = True
            self._api.run_as_background_process("carematrix_audit_flush", self._flush)

    async def _flush(self) -> None:
        try:
            await self._schema.ready()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    await self._api.run_db_interaction(
                        "carematrix_audit_append", append, self.dialect, [r for r, _ in batch]
                    )
                except Exception as exc:
                    self.failures += 1
                    log.exception("could not write %d audit record(s)", len(batch))
                    _settle(batch, exc)
                    continue
                _settle(batch, None)
        except Exception as exc:
            log.exception("audit flush failed")
            _settle(self._pending, exc)
            self._pending = []
        finally:
            self._flushing = False
            if self._pending:
                self._kick()



def _settle(batch: list[tuple[AuditRecord, defer.Deferred | None]], error: Exception | None) -> None:
    """Wake the callers waiting on ``batch``, each in its own logging context."""
    resume([done for _, done in batch if done is not None], error)
