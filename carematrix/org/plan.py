"""Org sync as a pure diff: what Matrix should look like (from the policy) against what it
looks like now, as an ordered list of actions. Applying the plan twice changes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

from carematrix.policy.model import Policy, RoomClassState

SPACE_CLASS = "department"  # a unit's space is scoped like its department room


@dataclass(frozen=True)
class DesiredRoom:
    alias: str  # localpart of the canonical alias
    name: str
    topic: str
    room: RoomClassState
    is_space: bool
    parent_alias: str | None
    members: frozenset[str]  # localparts


@dataclass(frozen=True)
class Desired:
    accounts: dict[str, str]  # localpart -> display name
    rooms: tuple[DesiredRoom, ...]  # parents before children


@dataclass
class ObservedUser:
    displayname: str | None
    deactivated: bool


@dataclass
class Observed:
    users: dict[str, ObservedUser] = field(default_factory=dict)  # local users by localpart
    managed: set[str] = field(default_factory=set)  # accounts org sync has created before
    rooms: dict[str, set[str]] = field(default_factory=dict)  # alias -> joined localparts


@dataclass(frozen=True)
class Action:
    kind: str  # create_account, update_name, reactivate, deactivate, create_room, join, kick
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
                topic=f"{unit.name} — space of the unit's rooms",
                room=RoomClassState(SPACE_CLASS, unit.id),
                is_space=True,
                parent_alias=space_alias(unit.parent) if unit.parent else None,
                members=members,
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
                    topic=f"[{rc.label}] {spec.topic.format(**fields)}".strip(),
                    room=RoomClassState(spec.room_class, unit.id),
                    is_space=False,
                    parent_alias=space_alias(unit.id),
                    members=members if rc.scope == "unit" else frozenset(accounts),
                )
            )
    return Desired(accounts, tuple(rooms))


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
    return actions
