"""The tamper-evident audit trail: records, hash chain, storage, checkpoints, verify,
search and export (table, JSON, CSV, FHIR R4), and syslog forwarding.

Storage functions take a DB-API cursor and a dialect (``"sqlite"`` or ``"postgres"``) so
they run inside Synapse's ``run_db_interaction`` as well as on connections of our own
(:mod:`carematrix.audit.db`). See docs/audit.md.
"""

from carematrix.audit.actions import ACTIONS, DENIED, FAILURE, SUCCESS
from carematrix.audit.checkpoint import (
    Checkpoint,
    export_verify_key,
    load_or_create_signing_key,
    load_verify_keys,
    make_checkpoint,
)
from carematrix.audit.record import AuditRecord, AuditRecordInvalid, iso_time, now_us, parse_time
from carematrix.audit.search import AuditQuery, query_record, render, search
from carematrix.audit.store import StoredRecord, append, ensure_schema, head
from carematrix.audit.verify import VerifyResult, verify

__all__ = [
    "ACTIONS",
    "DENIED",
    "FAILURE",
    "SUCCESS",
    "AuditQuery",
    "AuditRecord",
    "AuditRecordInvalid",
    "Checkpoint",
    "StoredRecord",
    "VerifyResult",
    "append",
    "ensure_schema",
    "export_verify_key",
    "head",
    "iso_time",
    "load_or_create_signing_key",
    "load_verify_keys",
    "make_checkpoint",
    "now_us",
    "parse_time",
    "query_record",
    "render",
    "search",
    "verify",
]
