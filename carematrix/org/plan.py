"""Org sync as a pure diff: what Matrix should look like (from the policy) against what it
looks like now, as an ordered list of actions. Applying the plan twice changes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

from carematrix.policy.model import Policy
from carematrix.policy.rooms import RoomClassState

SPACE_CLASS = "department"  # a unit's space is scoped like its department room
POPULATING_JOIN_RULE = "public"  # a new room's join rule until its initial members are in


@dataclass(frozen=True)
class DesiredRoom:
    alias: str  # localpart of the canonical alias
    name: str
    topic: str
    room: RoomClassState
    is_space: bool
    parent_alias: str | None
    members: frozenset[str]  # localparts
    # Scoped to the whole hospital: every account on this server may be in it. Such a room
    # keeps join rule "public" after it is populated (the org-scope check still runs on every
    # join). Locked to "invite", Synapse's user directory would record every pair of its
    # members as sharing a private room: 25 million rows for 5,000 staff, rewritten when the
    # join rule changes (Synapse issue #3849).
    open_to_all: bool = False


@dataclass(frozen=True)
class Desired:
    accounts: dict[str, str]  # localpart -> display name
    rooms: tuple[DesiredRoom, ...]  # parents before children
    policy_digest: str = ""  # the policy this was derived from


@dataclass
class ObservedUser:
    displayname: str | None
    deactivated: bool


@dataclass
class Observed:
    users: dict[str, ObservedUser] = field(default_factory=dict)  # local users by localpart
    managed: set[str] = field(default_factory=set)  # accounts org sync has created before
    rooms: dict[str, set[str]] = field(default_factory=dict)  # alias -> joined localparts
    join_rules: dict[str, str] = field(default_factory=dict)  # alias -> current join rule


@dataclass(frozen=True)
class Action:
    kind: str  # create_account, update_name, reactivate, deactivate, create_room, join, kick, lock
    target: str  # localpart or alias
    detail: str = ""  # display name, room alias, reason
    room: DesiredRoom | None = None

    def describe(self) -> str:
        words = {
            "create_account": f"+ account @{self.target} ({self.detail})",
            "update_name": f"~ account @{self.target} display name -> {self.detail}",
            "reactivate": f"+ account @{self.target} reactivated ({self.detail})",
            "deactivate": f"- account @{self.target} deactivated (no longer in the org)",
            "create_room": f"+ {'space' if self.room and self.room.is_space else 'room'} #{self.target} ({self.detail})",
            "join": f"+ @{self.target} joins #{self.detail}",
            "kick": f"- @{self.target} leaves #{self.detail} (no longer in scope)",
            "lock": f"~ #{self.target} join rule -> invite",
        }
        return words[self.kind]


def space_alias(unit_id: str) -> str:
    return unit_id


def desired_state(policy: Policy) -> Desired:
    accounts = {s.localpart: policy.display_name(s) for s in policy.staff}
    rooms: list[DesiredRoom] = []

    def members_of(unit_id: str) -> frozenset[str]:
        return frozenset(s.localpart for s in policy.staff if policy.in_unit(s, unit_id))

    ordered = sorted(policy.units.values(), key=lambda u: len(policy.ancestry(u.id)))
    for unit in ordered:
        members = members_of(unit.id)
        rooms.append(
            DesiredRoom(
                alias=space_alias(unit.id),
                name=unit.name,
                topic=f"{unit.name} — 本科室的房间 space of the unit's rooms",
                room=RoomClassState(SPACE_CLASS, unit.id),
                is_space=True,
                parent_alias=space_alias(unit.parent) if unit.parent else None,
                members=members,
                open_to_all=unit.parent is None,
            )
        )
        for spec in policy.standard_rooms:
            if not spec.applies_to(unit.id):
                continue
            rc = policy.room_classes[spec.room_class]
            fields = {"unit": unit.id, "unit_name": unit.name, "hospital": policy.hospital_name}
            rooms.append(
                DesiredRoom(
                    alias=spec.alias.format(**fields),
                    name=spec.name.format(**fields),
                    topic=f"{rc.topic_prefix} {spec.topic.format(**fields)}".strip(),
                    room=RoomClassState(spec.room_class, unit.id),
                    is_space=False,
                    parent_alias=space_alias(unit.id),
                    members=members if rc.scope == "unit" else frozenset(accounts),
                    open_to_all=rc.scope != "unit" or unit.parent is None,
                )
            )
    return Desired(accounts, tuple(rooms), policy.digest)


def plan(desired: Desired, observed: Observed) -> list[Action]:
    actions: list[Action] = []
    for localpart, name in sorted(desired.accounts.items()):
        user = observed.users.get(localpart)
        if user is None:
            actions.append(Action("create_account", localpart, name))
        elif user.deactivated:
            actions.append(Action("reactivate", localpart, name))
        elif user.displayname != name:
            actions.append(Action("update_name", localpart, name))
    leaving: set[str] = set()
    for localpart in sorted(observed.managed - set(desired.accounts)):
        user = observed.users.get(localpart)
        if user is not None and not user.deactivated:
            actions.append(Action("deactivate", localpart))
            leaving.add(localpart)  # deactivation takes them out of every room
    for room in desired.rooms:
        if room.alias not in observed.rooms:
            actions.append(Action("create_room", room.alias, room.name, room))
    for room in desired.rooms:
        present = observed.rooms.get(room.alias, set())
        for localpart in sorted(room.members - present):
            actions.append(Action("join", localpart, room.alias, room))
        # ``present`` never holds the bot or role users (the observer leaves them out).
        for localpart in sorted(present - room.members - leaving):
            actions.append(Action("kick", localpart, room.alias, room))
    # A room org sync creates starts with join rule ``public``, so that its initial members
    # are brought in as one join event each (in batches) instead of an invite and a join;
    # the policy module still refuses anyone out of scope meanwhile. Once populated it is
    # locked to ``invite`` like every standard room, except a room open to the whole
    # hospital (see DesiredRoom.open_to_all). A room left ``public`` by an interrupted sync
    # is locked on the next one.
    for room in desired.rooms:
        if room.open_to_all:
            continue
        if room.alias not in observed.rooms or observed.join_rules.get(room.alias) == POPULATING_JOIN_RULE:
            actions.append(Action("lock", room.alias, room.alias, room))
    return actions
