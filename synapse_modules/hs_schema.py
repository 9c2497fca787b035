"""Our tables in the homeserver database, brought to the code's schema version once per
Synapse process before any module touches them.

The modules start the upgrade when Synapse constructs them (constructors cannot wait for the
database), and every database use of ours waits on :meth:`SchemaGate.ready` first. Workers
starting together take turns inside :mod:`carematrix.hsdb.migrations`. A database newer than
the code is refused: CRITICAL in the log once, and every write of ours fails (an action that
needs an audit record is refused), never run against tables this code does not know.
"""

from __future__ import annotations

import logging
import weakref

from synapse.module_api import ModuleApi, make_deferred_yieldable
from twisted.internet import defer

from carematrix.hsdb import migrations
from synapse_modules.adapter.homeserver import dialect_of
from synapse_modules.adapter.logging_context import resume

log = logging.getLogger(__name__)

_gates: weakref.WeakKeyDictionary[ModuleApi, SchemaGate] = weakref.WeakKeyDictionary()


def gate(api: ModuleApi) -> SchemaGate:
    """The process's gate (the modules share Synapse's one ModuleApi)."""
    found = _gates.get(api)
    if found is None:
        found = _gates[api] = SchemaGate(api, dialect_of(api))
    return found


class SchemaGate:
    def __init__(self, api: ModuleApi, dialect: str) -> None:
        self._api = api
        self.dialect = dialect
        self._started = False
        self._ready = False
        self._refused: migrations.SchemaVersionError | None = None
        self._waiters: list[defer.Deferred] | None = None  # while the upgrade runs

    def start(self) -> None:
        """Begin the upgrade in the background (at module start); failures are logged."""
        if self._started:
            return
        self._started = True
        self._api.run_as_background_process("carematrix_schema_upgrade", self._start)

    async def _start(self) -> None:
        try:
            await self.ready()
        except migrations.SchemaVersionError:
            pass  # logged CRITICAL by ready()
        except Exception:
            log.exception("upgrading the CareMatrix tables failed; retried on first use")

    async def ready(self) -> None:
        """Return once the tables are at the code's version. Callers that come while the
        upgrade runs wait for that one run (two at once would only take turns on the lock);
        each resumes in its own logging context. A failed run is tried again by the next
        caller, except a refusal of a newer database, which is final."""
        if self._ready:
            return
        if self._refused is not None:
            raise self._refused
        if self._waiters is not None:
            waiting: defer.Deferred = defer.Deferred()
            self._waiters.append(waiting)
            await make_deferred_yieldable(waiting)
            return
        self._waiters = []
        error: Exception | None = None
        try:
            await self._api.run_db_interaction("carematrix_schema_prepare", migrations.prepare, self.dialect)
            before, after = await self._api.run_db_interaction(
                "carematrix_schema_migrate", migrations.migrate, self.dialect
            )
            if before != after:
                log.info("CareMatrix tables upgraded from schema version %d to %d", before, after)
            self._ready = True
        except migrations.SchemaVersionError as exc:
            self._refused = error = exc
            log.critical("CareMatrix cannot use this database: %s", exc)
            raise
        except Exception as exc:
            error = exc
            raise
        finally:
            waiters, self._waiters = self._waiters, None
            resume(waiters, error)

