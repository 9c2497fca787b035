"""Reading our tables in the homeserver database, for the commands that report on them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from carematrix_ops.deploy.settings import Deployment


def homeserver_db_target(deployment: Deployment) -> str:
    s = deployment.settings
    return s.db_url if s.database == "postgres" and s.db_url else str(deployment.paths.sqlite_db)


@contextmanager
def our_tables(deployment: Deployment) -> Iterator[tuple[Any, str]]:
    """A read-only transaction on the homeserver database, for commands that read our tables:
    refused (:class:`SchemaVersionError`, reported by :func:`main`) unless they are at the
    version this code reads. The homeserver upgrades them when it starts; tools never do."""
    from carematrix.hsdb.migrations import require_current
    from carematrix_ops.audit_db import connect

    with connect(homeserver_db_target(deployment)) as db, db.transaction(read_only=True) as txn:
        require_current(txn, db.dialect)
        yield txn, db.dialect
