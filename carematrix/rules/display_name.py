"""Staff appear under their real name from the staff list in every room.

A clinician must be able to trust who wrote an order: a per-room nickname (a member event
of one's own carrying another display name) is refused. Accounts outside the staff list
(the service, tooling) are not bound by it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from carematrix.policy.model import Policy
from carematrix.policy.org import Staff
from carematrix.rules.verdict import ALLOW, Verdict

REAL_NAMES = Verdict(
    False,
    "identity.real_name",
    "Staff appear under their real name from the staff list; per-room nicknames are not allowed.",
)


def decide_display_name(
    policy: Policy, staff: Staff | None, content: Mapping[str, Any], profile_name: str | None = None
) -> Verdict:
    """May ``staff`` join a room with the member ``content`` they sent for themselves?

    The name on their profile passes too: org sync sets it, and a join made just before the
    sync catches up with a renamed policy must not fail. Reading the profile costs a database
    query, so callers ask without ``profile_name`` first and again with it only on a refusal.
    """
    if staff is None or content.get("membership") != "join":
        return ALLOW
    name = content.get("displayname")
    if name is None or name == policy.display_name(staff):
        return ALLOW
    if profile_name is not None and name == profile_name:
        return ALLOW
    return REAL_NAMES
