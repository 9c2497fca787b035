"""Our tables in the homeserver database, on any DB-API cursor (SQLite or PostgreSQL).

Used inside Synapse (through ``run_db_interaction``) and by the command line, which opens
the same database directly; nothing here imports Synapse. :mod:`carematrix.hsdb.migrations`
creates and upgrades every one of the tables; the stores only read and write rows.
"""
