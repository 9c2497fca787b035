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
    "员工以员工名单中的真实姓名出现，不允许在房间内使用昵称。"
    " Staff appear under their real name from the staff list; per-room nicknames are not allowed.",
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


PROFILE_REAL_NAME = Verdict(
    False,
    "identity.real_name",
    "根据实名制规定，显示名是员工名单中的真实姓名，由医院同步，本人不能修改。"
    " Under the real-name policy your display name is your real name from the staff list, "
    "kept by the hospital; you cannot change it.",
)


def decide_profile_name(policy: Policy, staff: Staff | None, name: object) -> Verdict:
    """May ``staff`` set their own (global) display name to ``name``?

    Org sync sets every staff member's name from the staff list; the person may not. Setting
    it to the real name it already is passes (a client repeating it changes nothing).
    Accounts outside the staff list are not bound by the real-name rule."""
    if staff is None or name == policy.display_name(staff):
        return ALLOW
    return PROFILE_REAL_NAME
