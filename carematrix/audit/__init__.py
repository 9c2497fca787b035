"""The tamper-evident audit trail: records, hash chain, storage, checkpoints, verify,
search and export (table, JSON, CSV, FHIR R4), and syslog forwarding.

Storage functions take a DB-API cursor and a dialect (``"sqlite"`` or ``"postgres"``) so
they run inside Synapse's ``run_db_interaction`` as well as on connections of our own
(:mod:`carematrix_ops.audit_db`). See docs/audit.md.

The package re-exports nothing: import the submodule you need, so that the homeserver
database stores (:mod:`carematrix.hsdb`) can use the records and the chain without loading
the rest.
"""
