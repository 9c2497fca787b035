"""The public room directory: nobody but the CareMatrix service may publish a room in it.

A clinical room listed there could be found and joined by anyone on the server; the
hospital's rooms are reached by invitation and by org sync instead."""

from __future__ import annotations

from carematrix.rules.verdict import ALLOW, Verdict

RULE = "room.directory"

NOT_PUBLISHED = Verdict(
    False, RULE, "本医院的房间目录不能发布房间。 Rooms cannot be published in this hospital's room directory."
)
CREATE_PRIVATE = Verdict(
    False,
    RULE,
    "本医院的房间目录不能发布房间；请创建私密房间并邀请同事。"
    " Rooms cannot be published in this hospital's room directory; create it as a private room "
    "and invite colleagues.",
)


def decide_publish(is_system: bool, at_creation: bool = False) -> Verdict:
    """May this account list a room in the directory? ``at_creation``: the request is a
    createRoom asking to be public, and the refusal says how to create it instead."""
    if is_system:
        return ALLOW
    return CREATE_PRIVATE if at_creation else NOT_PUBLISHED
