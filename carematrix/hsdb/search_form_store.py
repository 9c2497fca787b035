"""Which form of Chinese text each of Synapse's full-text indexes is in.

Synapse's user directory and message search index were written, before CareMatrix segmented
Chinese text, with whole runs of characters as one token (carematrix/cjk_search.py). At
start the homeserver re-indexes the rows of an index whose recorded form is not the code's
``INDEX_FORM`` and records the form here, so an existing deployment is fixed once and a later
change of the form re-indexes again.
"""

from __future__ import annotations

import time
from typing import Any

from carematrix.hsdb.audit_store import sql

SEARCH_FORM = "carematrix_search_form"

USER_DIRECTORY = "user_directory"
MESSAGES = "event_search"


def form_of(txn: Any, dialect: str, index_name: str) -> str | None:
    """The form ``index_name`` was last re-indexed in, or None if never."""
    txn.execute(sql(f"SELECT form FROM {SEARCH_FORM} WHERE index_name = ?", dialect), (index_name,))
    row = txn.fetchone()
    return None if row is None else str(row[0])


def record_form(txn: Any, dialect: str, index_name: str, form: str, rows: int) -> None:
    """Record that ``index_name`` is now in ``form`` (``rows`` rows were rewritten)."""
    txn.execute(
        sql(
            f"INSERT INTO {SEARCH_FORM} (index_name, form, rows_reindexed, reindexed_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (index_name) DO UPDATE SET form = excluded.form, "
            "rows_reindexed = excluded.rows_reindexed, reindexed_at = excluded.reindexed_at",
            dialect,
        ),
        (index_name, form, rows, int(time.time() * 1000)),
    )
