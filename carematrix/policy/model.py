"""The policy in force, as frozen plain data.

Everything that decides (Synapse callbacks, the appservice) reads this model and nothing
else, so a rule means the same thing in every process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Room state event that records a room's class; clients can read it, only the bot may change it.
ROOM_CLASS_EVENT = "org.carematrix.room_class"

STAFF_NUMBER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
IDENT_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def staff_localpart(staff_number: str) -> str:
    """Matrix localpart for a staff number: stable, so an account survives name changes."""
    return staff_number.lower()


@dataclass(frozen=True)
class Unit:
    id: str
    name: str
    parent: str | None


@dataclass(frozen=True)
class Staff:
    staff_number: str
    name: str
    units: tuple[str, ...]
    position: str
    title: str
    roles: frozenset[str]

    @property
    def localpart(self) -> str:
        return staff_localpart(self.staff_number)


@dataclass(frozen=True)
class Audience:
    """Who may do something: anyone holding one of ``roles`` or listed in ``staff``."""

    roles: frozenset[str] = frozenset()
    staff: frozenset[str] = frozenset()

    def admits(self, person: Staff | None) -> bool:
        if person is None:
            return False
        return bool(self.roles & person.roles) or person.staff_number in self.staff


@dataclass(frozen=True)
class RoomClass:
    id: str
    description: str
    # None means every member of the room may post.
    post: Audience | None
    # None means any staff member may create rooms of this class.
    create: Audience | None
    reactions: bool = True


@dataclass(frozen=True)
class Policy:
    hospital_name: str
    roles: dict[str, str]
    units: dict[str, Unit]
    staff: tuple[Staff, ...]
    room_classes: dict[str, RoomClass]
    digest: str
    _by_localpart: dict[str, Staff] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_localpart.update({s.localpart: s for s in self.staff})

    def staff_for_localpart(self, localpart: str) -> Staff | None:
        return self._by_localpart.get(localpart)
