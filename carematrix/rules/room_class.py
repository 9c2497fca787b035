"""Who may post in a room of a given class, and who may set a room's class."""

from __future__ import annotations

from carematrix.policy.model import Audience, Policy, Staff
from carematrix.rules.verdict import ALLOW, Verdict

# Events a reader of a restricted room may still send: acknowledging with a reaction
# (if the class allows) and redacting their own reaction.
_REACTION = "m.reaction"
_REDACTION = "m.room.redaction"


def _audience_words(audience: Audience, policy: Policy) -> str:
    parts = [f"'{role}'" for role in sorted(audience.roles)]
    who = ""
    if parts:
        who = "staff with the role " + " or ".join(parts)
    if audience.staff:
        named = "named staff members"
        who = f"{who} and {named}" if who else named
    return who or "nobody"


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
        return Verdict(
            False,
            "room_class.undefined",
            f"This room's class '{room_class}' is not defined in the hospital policy, so "
            "posting is blocked until an administrator restores it.",
        )
    if rc.post is None:
        return ALLOW
    if event_type == _REDACTION or (event_type == _REACTION and rc.reactions):
        return ALLOW
    if rc.post.admits(sender):
        return ALLOW
    label = rc.description or f"{rc.id} room"
    return Verdict(
        False,
        f"room_class.{rc.id}.post",
        f"Only {_audience_words(rc.post, policy)} may post here ({label}).",
    )


def decide_class_change(
    policy: Policy,
    current_class: str | None,
    new_class: object,
    sender: Staff | None,
    is_system: bool,
) -> Verdict:
    """May ``sender`` set the room's class to ``new_class`` (the state event's content)?"""
    if is_system:
        return ALLOW
    if current_class is not None:
        return Verdict(
            False,
            "room_class.immutable",
            "A room's class is fixed by the hospital and cannot be changed by users.",
        )
    if not isinstance(new_class, str) or new_class not in policy.room_classes:
        known = ", ".join(sorted(policy.room_classes)) or "none"
        return Verdict(
            False,
            "room_class.undefined",
            f"'{new_class}' is not a room class of this hospital (known classes: {known}).",
        )
    rc = policy.room_classes[new_class]
    if rc.create is None or rc.create.admits(sender):
        return ALLOW
    return Verdict(
        False,
        f"room_class.{rc.id}.create",
        f"Only {_audience_words(rc.create, policy)} may create {rc.id} rooms.",
    )
