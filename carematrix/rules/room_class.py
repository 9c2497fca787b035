"""Room-class rules: posting, setting a class, and keeping a room's settings within its class."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from carematrix.policy.model import Policy
from carematrix.policy.org import Staff
from carematrix.policy.rooms import (
    POWER_LEVEL_DEFAULTS,
    PROTECTION_EVENT,
    Audience,
    RoomClass,
    RoomClassState,
)
from carematrix.rules.protection import ENCRYPTION_EVENT, RETENTION_EVENT, decide_protection_state
from carematrix.rules.verdict import ALLOW, Verdict

# Events a reader of a restricted room may still send: acknowledging with a reaction
# (if the class allows) and redacting their own reaction.
_REACTION = "m.reaction"
_REDACTION = "m.room.redaction"


def audience_words(audience: Audience) -> str:
    """Who an audience admits, in English (the sentence's English half)."""
    parts = [f"'{role}'" for role in sorted(audience.roles)]
    who = ""
    if parts:
        who = "staff with the role " + " or ".join(parts)
    if audience.staff:
        named = "named staff members"
        who = f"{who} and {named}" if who else named
    return who or "the CareMatrix service"


def audience_words_zh(audience: Audience) -> str:
    """Who an audience admits, in Chinese: the refusal says it first, as staff read it."""
    who = ""
    if audience.roles:
        who = "具有 " + " 或 ".join(f"'{role}'" for role in sorted(audience.roles)) + " 角色的员工"
    if audience.staff:
        who = f"{who}和指定员工" if who else "指定员工"
    return who or "医院的 CareMatrix 服务"


def undefined(class_id: str) -> Verdict:
    return Verdict(
        False,
        "room_class.undefined",
        f"本房间的类别 '{class_id}' 未在医院策略中定义，管理员恢复之前不能进行此操作。"
        f" This room's class '{class_id}' is not defined in the hospital policy, so this is "
        "blocked until an administrator restores it.",
    )


def resolve(policy: Policy, room: RoomClassState) -> RoomClass | Verdict | None:
    """The room's class, None for an unclassified room, or a refusal if it is undefined."""
    if room.class_id is None:
        return None
    rc = policy.room_classes.get(room.class_id)
    return rc if rc is not None else undefined(room.class_id)


def decide_post(
    policy: Policy,
    room_class: str | None,
    sender: Staff | None,
    event_type: str,
    is_system: bool,
) -> Verdict:
    """May ``sender`` send a non-state event of ``event_type`` into a room of ``room_class``?

    ``sender`` is None for accounts that are not in the org (they may post nowhere that
    restricts posting). The CareMatrix bot (``is_system``) posts everywhere.
    """
    if room_class is None or is_system:
        return ALLOW
    rc = policy.room_classes.get(room_class)
    if rc is None:
        return undefined(room_class)
    if rc.post is None:
        return ALLOW
    if event_type == _REDACTION or (event_type == _REACTION and rc.reactions):
        return ALLOW
    if rc.post.admits(sender):
        return ALLOW
    return Verdict(
        False,
        f"room_class.{rc.id}.post",
        f"只有{audience_words_zh(rc.post)}可以在此发言（{rc.label}）。"
        f" Only {audience_words(rc.post)} may post here ({rc.label}).",
    )


def decide_class_change(
    policy: Policy,
    current_class: str | None,
    new_class: object,
    sender: Staff | None,
    is_system: bool,
    unit: object = None,
) -> Verdict:
    """May ``sender`` set the room's class to ``new_class`` (and ``unit``, for unit-scoped
    classes)? Classes are fixed once set; only the bot may change them."""
    if is_system:
        return ALLOW
    if current_class is not None:
        return Verdict(
            False,
            "room_class.immutable",
            "房间类别由医院设定，用户不能更改。"
            " A room's class is fixed by the hospital and cannot be changed by users.",
        )
    if not isinstance(new_class, str) or new_class not in policy.room_classes:
        known = ", ".join(sorted(policy.room_classes)) or "none"
        known_zh = ", ".join(sorted(policy.room_classes)) or "无"
        return Verdict(
            False,
            "room_class.undefined",
            f"本医院没有 '{new_class}' 这个房间类别（已有类别：{known_zh}）。"
            f" '{new_class}' is not a room class of this hospital (known classes: {known}).",
        )
    rc = policy.room_classes[new_class]
    if rc.create is not None and not rc.create.admits(sender):
        return Verdict(
            False,
            f"room_class.{rc.id}.create",
            f"只有{audience_words_zh(rc.create)}可以创建 {rc.id} 类房间（{rc.label}）。"
            f" Only {audience_words(rc.create)} may create {rc.id} rooms.",
        )
    if rc.scope == "unit":
        if not isinstance(unit, str) or unit not in policy.units:
            return Verdict(
                False,
                f"room_class.{rc.id}.scope",
                f"此类房间（{rc.label}）必须指明所属科室。 A {rc.label} must name the unit it belongs to.",
            )
        if not policy.in_unit(sender, unit):
            return Verdict(
                False,
                f"room_class.{rc.id}.scope",
                f"只有{policy.units[unit].name} 的员工可以创建该科室的此类房间（{rc.label}）。"
                f" Only staff of {policy.units[unit].name} may create its {rc.label}.",
            )
    return ALLOW


# The room settings a class keeps within bounds, as staff read them in Chinese.
SETTING_WORDS_ZH = {"join rule": "加入规则", "history visibility": "历史消息可见范围"}


def _allowed_value(rc: RoomClass, key: str, value: object, allowed: tuple[str, ...], what: str) -> Verdict:
    if value in allowed:
        return ALLOW
    return Verdict(
        False,
        f"room_class.{rc.id}.{key}",
        f"此类房间（{rc.label}）不允许{SETTING_WORDS_ZH.get(what, what)} '{value}'（允许：{', '.join(allowed)}）。"
        f" {what.capitalize()} '{value}' is not allowed in a {rc.label} (allowed: {', '.join(allowed)}).",
    )


def power_floor_violation(rc: RoomClass, content: Mapping[str, Any]) -> Verdict:
    for key, floor in rc.min_power_levels:
        level = content.get(key, POWER_LEVEL_DEFAULTS[key])
        if not isinstance(level, int) or isinstance(level, bool):
            try:
                level = int(level)
            except (TypeError, ValueError):
                level = -1
        if level < floor:
            return Verdict(
                False,
                f"room_class.{rc.id}.power_levels",
                f"此类房间（{rc.label}）中 '{key}' 的权限等级不能低于 {floor}。"
                f" In a {rc.label} the power level for '{key}' must stay at {floor} or above.",
            )
    return ALLOW


def decide_state_change(
    policy: Policy,
    room: RoomClassState,
    event_type: str,
    content: Mapping[str, Any],
    is_system: bool,
) -> Verdict:
    """Keep join rules, history visibility, power levels and protections within the class."""
    if is_system:
        return ALLOW
    rc = resolve(policy, room)
    if event_type in (PROTECTION_EVENT, RETENTION_EVENT, ENCRYPTION_EVENT):
        return rc if isinstance(rc, Verdict) else decide_protection_state(rc, event_type, content, is_system)
    if rc is None:
        return ALLOW
    if isinstance(rc, Verdict):
        return rc
    if event_type == "m.room.join_rules":
        return _allowed_value(rc, "join_rules", content.get("join_rule"), rc.join_rules, "join rule")
    if event_type == "m.room.history_visibility":
        return _allowed_value(
            rc, "history_visibility", content.get("history_visibility"), rc.history_visibility, "history visibility"
        )
    if event_type == "m.room.power_levels":
        return power_floor_violation(rc, content)
    return ALLOW
