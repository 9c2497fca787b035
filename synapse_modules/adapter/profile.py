"""The global display name: our real-name rule decides a person's own change first.

Synapse gives modules no hook before a profile change (``on_profile_update`` comes after
it), and with ``enable_set_displayname: false`` its own refusal names neither the rule nor
the real-name policy. ``ProfileHandler.set_displayname`` is wrapped: a change a user makes
to their own name (not an admin's, such as org sync's) is put to the guard, and a refusal
is answered as Synapse answers its own, with our message and the rule.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from synapse.module_api.errors import Codes, SynapseError

from carematrix.rules import Verdict
from synapse_modules.adapter.wrapping import wrap_once

PROFILE_HANDLER = ("synapse.handlers.profile", "ProfileHandler")
# (user ID, requested name) -> the verdict, recorded by the guard when it refuses.
DisplayNameGuard = Callable[[str, Any], Awaitable[Verdict]]
_guard: DisplayNameGuard | None = None


def install_display_name_guard(guard: DisplayNameGuard) -> None:
    global _guard
    _guard = guard
    wrap_once(PROFILE_HANDLER, "set_displayname", _guarded)


def _guarded(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def set_displayname(self: Any, *a: Any, **kw: Any) -> Any:
        target, requester = kw.get("target_user"), kw.get("requester")
        own = requester is not None and target == requester.user
        if _guard is not None and target is not None and own and not kw.get("by_admin", False):
            verdict = await _guard(target.to_string(), kw.get("new_displayname"))
            if not verdict.allowed:
                raise SynapseError(
                    403, verdict.message(), Codes.FORBIDDEN, additional_fields={"org.carematrix.rule": verdict.rule}
                )
        return await original(self, *a, **kw)

    return set_displayname
