"""``!call <role or person>`` as pure decisions: who is meant, and whether an existing
two-person room can carry the call.

Element offers its call button in a room with exactly two members; a call to "the ICU doctor
on duty" must ring whoever holds that role *now*, in a direct chat between the two people,
not in a room with the role account or the service in it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from carematrix import identity
from carematrix.policy.model import Policy
from carematrix.policy.oncall import OncallPolicy, RoleAddress
from carematrix.policy.org import staff_localpart


@dataclass(frozen=True)
class CallTarget:
    role_id: str | None  # a role: whoever holds it now is called
    staff_number: str | None  # a person


def typed_key(text: str) -> str:
    """What someone typed, reduced to what they meant: full-width forms as ASCII, any case,
    without the spaces and separators names are written with (``重症医学科 · 值班医生`` and
    ``重症医学科值班医生`` are one key)."""
    return re.sub(r"[\s·・•.,，、()（）\-–—_]+", "", unicodedata.normalize("NFKC", text)).lower()


def roles_named(oncall: OncallPolicy, given: str) -> list[RoleAddress]:
    """The on-duty roles ``given`` names: by ID in any case, else every role whose name holds
    it (``重症医学科值班医生``, ``值班医生``, ``ICU doctor``)."""
    key = typed_key(given)
    if not key:
        return []
    exact = [r for r in oncall.roles.values() if typed_key(r.id) == key or typed_key(r.localpart) == key]
    if exact:
        return exact
    return sorted((r for r in oncall.roles.values() if key in typed_key(r.name)), key=lambda r: r.id)


def call_target(policy: Policy, given: str, server: str) -> CallTarget | str:
    """What ``!call`` was given: a role ID (``icu/doctor``), a role account
    (``@role-icu-doctor:server`` or its localpart), a role's name as staff read it
    (``重症医学科值班医生``), a staff number (``D2001``), a colleague's name (``陈静``) or a staff
    member's Matrix ID. A sentence saying what is known when it is none of those, or when it
    fits more than one."""
    text = given.strip()
    oncall = policy.oncall
    if oncall is not None:
        if text in oncall.roles:
            return CallTarget(text, None)
        local = identity.local_localpart(text, server) if text.startswith("@") else text
        role = oncall.role_for_localpart(local or "")
        if role is not None:
            return CallTarget(role.id, None)
    local = identity.local_localpart(text, server) if text.startswith("@") else staff_localpart(text)
    person = policy.staff_for_localpart(local or "")
    if person is not None:
        return CallTarget(None, person.staff_number)
    roles = roles_named(oncall, text) if oncall is not None else []
    key = typed_key(text)
    people = [s for s in policy.staff if key and key in typed_key(s.name)]
    if len(roles) + len(people) == 1:
        return CallTarget(roles[0].id, None) if roles else CallTarget(None, people[0].staff_number)
    if roles or people:
        fits = "; ".join([f"{r.id} ({r.name})" for r in roles] + [f"{p.staff_number} ({p.name})" for p in people])
        return (
            f"'{text}' 可指多个角色或员工，请写明其一（如 !call {(roles[0].id if roles else people[0].staff_number)}）：{fits}。"
            f" '{text}' fits more than one role or person; name one of them: {fits}."
        )
    known = "; ".join(f"{r.id} ({r.name})" for r in sorted(oncall.roles.values(), key=lambda r: r.id)) if oncall else ""
    return (
        f"找不到名为 '{text}' 的值班角色或员工（值班角色：{known or '无'}）。请写角色、工号或姓名，如 !call icu/doctor。"
        f" '{text}' is neither an on-duty role ({known or 'none'}) nor a member of staff; "
        "give a role, a staff number or a name, e.g. !call icu/doctor."
    )


def room_carries_call(memberships: dict[str, str], caller: str, callee: str) -> bool:
    """A room can carry the call when the two are in it (joined, or the callee invited) and
    nobody else is: the shape Element's call button needs."""
    present = {user for user, membership in memberships.items() if membership in ("join", "invite")}
    return present == {caller, callee} and memberships.get(caller) == "join"
