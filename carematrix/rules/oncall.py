"""Who may change the on-call roster from chat (``!oncall cover`` and ``!oncall swap``).

A roster change decides who is paged for a role: a wrong one leaves a ward without its
doctor. Whoever holds the role now may hand it over, and so may staff with one of the
roles the policy names in ``oncall.overrides_by`` (a scheduler); a swap trades the
requester's own shifts, so any staff member may ask for one."""

from __future__ import annotations

from collections.abc import Collection

from carematrix.policy.org import Staff
from carematrix.rules.verdict import ALLOW, Verdict


def decide_cover(person: Staff | None, role_name: str, holders: Collection[str], overrides_by: Collection[str]) -> Verdict:
    """May ``person`` say who covers the role ``role_name`` (held now by the staff numbers
    ``holders``)?"""
    if person is not None and (person.staff_number in holders or not person.roles.isdisjoint(overrides_by)):
        return ALLOW
    who = f"Only whoever holds {role_name} now"
    who_zh = f"只有当前担任 {role_name} 的人"
    if overrides_by:
        roles = " or ".join(f"'{role}'" for role in sorted(overrides_by))
        who += f" or staff with the role {roles}"
        who_zh += "或具有 " + " 或 ".join(f"'{role}'" for role in sorted(overrides_by)) + " 角色的员工"
    return Verdict(False, "oncall.cover", f"{who_zh}可以更改由谁顶班。 {who} may change who covers it.")


NOT_ON_STAFF = Verdict(
    False, "oncall.swap", "只有员工名单上的员工可以换班。 Only staff on the staff list can swap their shifts."
)


def decide_swap(person: Staff | None) -> Verdict:
    """May ``person`` trade their next shift with someone else's?"""
    return ALLOW if person is not None else NOT_ON_STAFF


NOT_STAFF_ACK = Verdict(
    False, "oncall.ack", "只有员工名单上的员工可以确认呼叫。 Only staff on the staff list can acknowledge pages."
)


def decide_ack(staff_number: str | None) -> Verdict:
    """A page is acknowledged by the person it paged; whoever is not on the staff list
    (a bot, a guest account) cannot have been paged."""
    return ALLOW if staff_number is not None else NOT_STAFF_ACK
