"""Room creation: every new room gets a class the creator may use, with settings inside it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from carematrix.policy.model import Policy
from carematrix.policy.org import Staff
from carematrix.policy.rooms import ROOM_CLASS_EVENT, RoomClassState
from carematrix.rules.directory import decide_publish
from carematrix.rules.membership import decide_membership
from carematrix.rules.protection import adjust_creation_request
from carematrix.rules.room_class import decide_class_change, power_floor_violation
from carematrix.rules.verdict import ALLOW, Verdict

# The join rule each createRoom preset implies (Matrix client-server spec).
PRESET_JOIN_RULES = {"public_chat": "public", "private_chat": "invite", "trusted_private_chat": "invite"}


@dataclass(frozen=True)
class CreationDecision:
    verdict: Verdict
    room: RoomClassState
    # True when the request carried no class: the caller adds the class state event.
    add_class_event: bool = False


def _initial_state(request: dict[str, Any], event_type: str) -> dict[str, Any] | None:
    for state in request.get("initial_state") or []:
        if isinstance(state, dict) and state.get("type") == event_type and state.get("state_key", "") == "":
            content = state.get("content")
            return content if isinstance(content, dict) else {}
    return None


def decide_create(
    policy: Policy,
    request: dict[str, Any],
    creator: Staff | None,
    is_system: bool,
    invitees: list[tuple[Staff | None, bool]],
) -> CreationDecision:
    """Decide a createRoom request. ``invitees`` are the (staff, is_system) of ``invite``."""
    if request.get("visibility") == "public":
        published = decide_publish(is_system, at_creation=True)
        if not published.allowed:
            return CreationDecision(published, RoomClassState())
    given = _initial_state(request, ROOM_CLASS_EVENT)
    if given is not None:
        room = RoomClassState.from_content(given)
    else:
        default = policy.default_direct_class if request.get("is_direct") else policy.default_room_class
        room = RoomClassState(default)
    if room.class_id is None:
        if is_system or not policy.room_classes:
            return CreationDecision(ALLOW, room)
        return CreationDecision(
            Verdict(
                False,
                "room_class.required",
                "每个房间都必须有类别，而本医院未设默认类别。"
                " Every room needs a class, and this hospital sets no default.",
            ),
            room,
        )
    verdict = decide_class_change(policy, None, room.class_id, creator, is_system, room.unit)
    if not verdict.allowed:
        return CreationDecision(verdict, room, given is None)
    rc = policy.room_classes[room.class_id]
    adjust_creation_request(rc, request)
    if is_system:
        return CreationDecision(verdict, room, given is None)

    join_rules = _initial_state(request, "m.room.join_rules")
    preset = request.get("preset") or ("public_chat" if request.get("visibility") == "public" else "private_chat")
    join_rule = join_rules.get("join_rule") if join_rules is not None else PRESET_JOIN_RULES.get(preset, "invite")
    if join_rule not in rc.join_rules:
        return CreationDecision(
            Verdict(
                False,
                f"room_class.{rc.id}.join_rules",
                f"此类房间（{rc.label}）不能以加入规则 '{join_rule}' 创建（允许：{', '.join(rc.join_rules)}）。"
                f" A {rc.label} cannot be created with join rule '{join_rule}' (allowed: {', '.join(rc.join_rules)}).",
            ),
            room,
        )
    history = _initial_state(request, "m.room.history_visibility")
    visibility = history.get("history_visibility") if history is not None else "shared"
    if visibility not in rc.history_visibility:
        return CreationDecision(
            Verdict(
                False,
                f"room_class.{rc.id}.history_visibility",
                f"此类房间（{rc.label}）不能以历史消息可见范围 '{visibility}' 创建"
                f"（允许：{', '.join(rc.history_visibility)}）。"
                f" A {rc.label} cannot be created with history visibility '{visibility}' "
                f"(allowed: {', '.join(rc.history_visibility)}).",
            ),
            room,
        )
    override = request.get("power_level_content_override")
    if isinstance(override, dict):
        floor = power_floor_violation(rc, override)
        if not floor.allowed:
            return CreationDecision(floor, room)
    for count, (invitee, invitee_is_system) in enumerate(invitees, start=1):
        verdict = decide_membership(policy, room, invitee, invitee_is_system, "invite", count)
        if not verdict.allowed:
            return CreationDecision(verdict, room)
    return CreationDecision(ALLOW, room, given is None)
