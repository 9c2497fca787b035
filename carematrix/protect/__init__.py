"""Content protection policies enforced by the Synapse modules (no-forward and friends).

Each submodule is imported on its own; this package deliberately re-exports nothing, so
loading one policy's code never drags in another's (nor its database helpers). For the
no-forward rule: :mod:`carematrix.protect.fingerprint` turns event content into fingerprints
(finding media and text with :mod:`~carematrix.protect.extract`, normalising it with
:mod:`~carematrix.protect.normalise`, hashing shingles with :mod:`~carematrix.protect.shingles`),
:mod:`carematrix.protect.copy_decision` decides what counts as a copy (pure functions, no
Synapse imports), and
:mod:`carematrix.hsdb.forward_store` remembers the room where each fingerprint was first
posted and finds copies, on any DB-API cursor in SQLite or PostgreSQL.
"""
