"""Events: checks on every new event ahead of Synapse's callback list, and censoring a
stored event at once."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from synapse.module_api import ModuleApi

from synapse_modules.adapter.homeserver import homeserver
from synapse_modules.adapter.tables import drop_search_row
from synapse_modules.adapter.wrapping import wrap_once

log = logging.getLogger(__name__)

EVENT_RULES = ("synapse.module_api.callbacks.third_party_event_rules_callbacks", "ThirdPartyEventRulesModuleApiCallbacks")
# name -> (runs last, check); a check returns False to refuse without a reason or raises
# SynapseError (403 with its message) to refuse with one. ``_event_check_order`` is the
# same, refusing checks first, kept in order when a check is installed (not per event).
_event_checks: dict[str, tuple[bool, Callable[[Any], Awaitable[bool]]]] = {}
_event_check_order: list[tuple[str, Callable[[Any], Awaitable[bool]]]] = []


def install_event_check(name: str, check: Callable[[Any], Awaitable[bool]], records: bool = False) -> None:
    """Run ``check`` on every event before it is stored, like a ``check_event_allowed``
    module callback but without the room's state: as soon as one such callback is
    registered, Synapse loads the full state of the room for every event (5,000 member
    events for each message or join in a hospital-wide room) to hand it over. Our checks
    need the event alone. Synapse's own callback list still runs after ours (and is free
    when no other module registered one). Refusals fail closed: a check that breaks refuses.
    ``records``: the check writes a record of the event, so it runs after every check that
    may refuse it."""
    _event_checks[name] = (records, check)
    _event_check_order[:] = [(n, c) for n, (_, c) in sorted(_event_checks.items(), key=lambda item: item[1][0])]
    wrap_once(EVENT_RULES, "check_event_allowed", _checking_events_first)


def _checking_events_first(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def check_event_allowed(self: Any, event: Any, context: Any) -> Any:
        from synapse.api.errors import SynapseError
        from twisted.internet.defer import CancelledError

        for check_name, check in _event_check_order:
            try:
                if not await check(event):
                    return False, None
            except (SynapseError, CancelledError):
                # A cancellation is Synapse calling off the work that made the event (a
                # profile change superseded by the next one cancels its room updates): not a
                # failed check, and the event is not sent either way.
                raise
            except Exception:
                log.exception("event check %s failed on %s; refusing the event", check_name, event.event_id)
                return False, None
        return await original(self, event, context)

    return check_event_allowed


async def censor_event(api: ModuleApi, event_id: str) -> None:
    """Replace the stored JSON of an event with its redacted form now (Synapse otherwise
    keeps it for ``redaction_retention_period``), across every worker's event cache, and
    delete its full-text search row."""
    store = homeserver(api).get_datastores().main
    await store.expire_event(event_id)
    await store.db_pool.runInteraction("carematrix_burn_search_row", drop_search_row, event_id)
