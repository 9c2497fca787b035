"""The homeserver behind the module API, and its database engine."""

from __future__ import annotations

from typing import Any

from synapse.module_api import ModuleApi


def homeserver(api: ModuleApi) -> Any:
    """Synapse's ``HomeServer``: the module API keeps it as ``_hs``."""
    return api._hs


def dialect_of(api: ModuleApi) -> str:
    """``postgres`` or ``sqlite``: the SQL dialect of the homeserver database, which our
    tables live in too."""
    from synapse.storage.engines import PostgresEngine

    engine = homeserver(api).get_datastores().main.database_engine
    return "postgres" if isinstance(engine, PostgresEngine) else "sqlite"


def events_position(api: ModuleApi) -> int:
    """How far this process has seen the event stream: the stream ordering up to which every
    event is persisted and known here. On a worker it advances as replication arrives, so its
    gap to the highest position of all processes is its replication lag, in events
    (``carematrix status``)."""
    return int(homeserver(api).get_datastores().main.get_room_max_stream_ordering())
