"""Who may join or be invited into a room: unit-scoped classes follow the org tree."""

from __future__ import annotations

from carematrix.policy.model import Policy
from carematrix.policy.org import Staff
from carematrix.policy.rooms import RoomClassState
from carematrix.rules.room_class import resolve
from carematrix.rules.verdict import ALLOW, Verdict


def decide_membership(
    policy: Policy,
    room: RoomClassState,
    target: Staff | None,
    target_is_system: bool,
    action: str,
    member_count: int = 0,
) -> Verdict:
    """May ``target`` join (``action`` "join") or be invited ("invite") into ``room``?

    ``member_count`` is the number of joined and invited members before this change; it
    matters only for classes with ``max_members``.
    """
    rc = resolve(policy, room)
    if rc is None or target_is_system:
        return ALLOW
    if isinstance(rc, Verdict):
        return rc
    if rc.max_members is not None and action == "invite" and member_count >= rc.max_members:
        return Verdict(
            False,
            f"room_class.{rc.id}.max_members",
            f"A {rc.label} is limited to {rc.max_members} people; start a discussion room instead.",
        )
    if rc.scope == "unit":
        unit = policy.units.get(room.unit or "")
        if unit is None:
            return Verdict(
                False,
                f"room_class.{rc.id}.scope",
                f"This {rc.label} names no valid unit, so nobody can be added until an "
                "administrator fixes it.",
            )
        if not policy.in_unit(target, unit.id):
            who = target.name if target is not None else "This account"
            verb = "may join this room" if action == "join" else "may be invited to this room"
            return Verdict(
                False,
                f"room_class.{rc.id}.scope",
                f"Only {unit.name} staff {verb} ({rc.label}); {who} is not {unit.name} staff.",
            )
    return ALLOW
