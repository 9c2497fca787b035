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
            f"此类房间（{rc.label}）最多 {rc.max_members} 人；请改建讨论组。"
            f" A {rc.label} is limited to {rc.max_members} people; start a discussion room instead.",
        )
    if rc.scope == "unit":
        unit = policy.units.get(room.unit or "")
        if unit is None:
            return Verdict(
                False,
                f"room_class.{rc.id}.scope",
                f"此房间（{rc.label}）未指明有效的科室，管理员修正之前不能添加任何人。"
                f" This {rc.label} names no valid unit, so nobody can be added until an "
                "administrator fixes it.",
            )
        if not policy.in_unit(target, unit.id):
            who = target.name if target is not None else "This account"
            who_zh = target.name if target is not None else "此账号"
            verb = "may join this room" if action == "join" else "may be invited to this room"
            verb_zh = "加入" if action == "join" else "被邀请加入"
            return Verdict(
                False,
                f"room_class.{rc.id}.scope",
                f"只有{unit.name} 的员工可以{verb_zh}此房间（{rc.label}）；{who_zh} 不是{unit.name} 的员工。"
                f" Only {unit.name} staff {verb} ({rc.label}); {who} is not {unit.name} staff.",
            )
    return ALLOW
