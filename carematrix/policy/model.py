"""The policy in force, as frozen plain data.

Everything that decides (Synapse callbacks, the appservice) reads this model and nothing
else, so a rule means the same thing in every process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Room state event that records a room's class; clients can read it, only the bot may change it.
ROOM_CLASS_EVENT = "org.carematrix.room_class"
# Room state event listing the content protections of the room's class, for clients to honour
# (no-screenshot needs the client) and show; the server enforces from the policy, not from it.
PROTECTION_EVENT = "org.carematrix.protection"
# Content flag a client or bot sets on a message to have it burnt after reading.
BURN_FLAG = "org.carematrix.burn_after_read"
# State only the CareMatrix service may set in a classified room.
SERVICE_STATE_EVENTS = (ROOM_CLASS_EVENT, PROTECTION_EVENT, "m.room.retention")

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


OTHER_FILES = ("audited", "block")
ENCRYPTION_STANCES = ("server", "required", "optional")


@dataclass(frozen=True)
class BurnPolicy:
    """When a burn-after-read message is purged: ``grace_seconds`` after every intended
    recipient has read it, or ``ttl_seconds`` after it was sent, whichever comes first."""

    grace_seconds: int
    ttl_seconds: int


DEFAULT_BURN = BurnPolicy(grace_seconds=30, ttl_seconds=7 * 86400)


@dataclass(frozen=True)
class Protection:
    """Content protections of a room class (docs/protection.md)."""

    no_forward: bool = False
    watermark: bool = False
    # Non-image files in a watermark room: served to members with an audit record, or blocked.
    other_files: str = "audited"
    no_screenshot: bool = False
    # Every message in the room burns after reading; None: only messages flagged by the sender.
    burn: BurnPolicy | None = None
    # Maximum message lifetime, enforced by the homeserver's purge jobs; None keeps messages.
    retention_seconds: int | None = None
    # "server": end-to-end encryption refused so the server can protect content; "required":
    # rooms are created encrypted; "optional": members decide.
    encryption: str = "server"

    @property
    def any(self) -> bool:
        return self != Protection()

    def state_content(self) -> dict[str, object]:
        """The ``org.carematrix.protection`` state content clients read."""
        return {
            "no_forward": self.no_forward,
            "watermark": self.watermark,
            "other_files": self.other_files,
            "no_screenshot": self.no_screenshot,
            "burn_after_read": (
                {"grace_seconds": self.burn.grace_seconds, "ttl_seconds": self.burn.ttl_seconds}
                if self.burn
                else None
            ),
            "retention_seconds": self.retention_seconds,
            "encryption": self.encryption,
        }

    def labels(self) -> list[str]:
        """Short words for the room topic, so Element users see what applies."""
        out = []
        if self.no_forward:
            out.append("no forwarding")
        if self.watermark:
            out.append("watermarked images")
        if self.no_screenshot:
            out.append("no screenshots")
        if self.burn:
            out.append("burn after read")
        if self.retention_seconds:
            out.append(f"kept {format_duration(self.retention_seconds)}")
        if self.encryption == "required":
            out.append("end-to-end encrypted")
        return out


def format_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


JOIN_RULES = ("invite", "knock", "restricted", "public")
HISTORY_VISIBILITIES = ("shared", "invited", "joined", "world_readable")
POWER_LEVEL_KEYS = ("events_default", "state_default", "invite", "kick", "ban", "redact")
# What Matrix assumes when a power-levels event omits a key.
POWER_LEVEL_DEFAULTS = {"events_default": 0, "state_default": 50, "invite": 0, "kick": 50, "ban": 50, "redact": 50}
SCOPES = ("hospital", "unit")
DISPLAY_NAME_FIELDS = ("name", "unit", "title", "position", "staff_number")


@dataclass(frozen=True)
class RoomClass:
    id: str
    description: str
    # None means every member of the room may post.
    post: Audience | None
    # None means any staff member may create rooms of this class; an empty Audience means
    # only the CareMatrix bot may (department, consult and announcement rooms).
    create: Audience | None
    reactions: bool = True
    # "unit": only staff of the room's unit (and the units below it) may join or be invited.
    scope: str = "hospital"
    # Allowed values; the first is what new rooms of the class get.
    join_rules: tuple[str, ...] = ("invite", "knock", "restricted", "public")
    history_visibility: tuple[str, ...] = ("shared", "invited", "joined")
    # Floors: a power-levels change may not set these below the given level.
    min_power_levels: tuple[tuple[str, int], ...] = ()
    max_members: int | None = None
    protection: Protection = Protection()

    @property
    def label(self) -> str:
        return self.description or f"{self.id} room"

    @property
    def topic_prefix(self) -> str:
        """What every room of the class shows first in its topic: the class and what
        protects it, so Element users see it."""
        return "[" + " · ".join([self.label, *self.protection.labels()]) + "]"


@dataclass(frozen=True)
class RoomClassState:
    """What a room's ``org.carematrix.room_class`` state says: its class and, for unit-scoped
    classes, the unit. ``class_id`` None means the room has no class."""

    class_id: str | None = None
    unit: str | None = None

    @classmethod
    def from_content(cls, content: object) -> RoomClassState:
        # Synapse hands modules frozen mappings, not dicts.
        if not isinstance(content, Mapping):
            return cls("(malformed)")
        class_id = content.get("class")
        unit = content.get("unit")
        # A malformed class still counts as a class: it resolves to "undefined" and blocks.
        return cls(
            class_id if isinstance(class_id, str) else repr(class_id),
            unit if isinstance(unit, str) else None,
        )

    def content(self) -> dict[str, str]:
        out = {"class": self.class_id or ""}
        if self.unit:
            out["unit"] = self.unit
        return out


@dataclass(frozen=True)
class StandardRoom:
    """A room the org sync keeps for every unit it applies to (e.g. each unit's team room)."""

    id: str
    room_class: str
    # Unit IDs, or None for every unit.
    units: tuple[str, ...] | None
    name: str
    alias: str
    topic: str

    def applies_to(self, unit_id: str) -> bool:
        return self.units is None or unit_id in self.units


@dataclass(frozen=True)
class Policy:
    hospital_name: str
    roles: dict[str, str]
    units: dict[str, Unit]
    staff: tuple[Staff, ...]
    room_classes: dict[str, RoomClass]
    digest: str
    display_name_format: str = "{name} · {unit} · {title}"
    standard_rooms: tuple[StandardRoom, ...] = ()
    # Class given to rooms created without one, and to direct chats.
    default_room_class: str | None = None
    default_direct_class: str | None = None
    # Applies to messages their sender flags burn-after-read in rooms without a burn policy.
    burn_defaults: BurnPolicy = DEFAULT_BURN
    # The ``oncall:`` section (carematrix.oncall.policy.OncallPolicy), if the hospital has one.
    oncall: Any = None
    # The ``clinical:`` section (carematrix.clinical_policy.ClinicalPolicy): HIS routing.
    clinical: Any = None
    _by_localpart: dict[str, Staff] = field(default_factory=dict, repr=False, compare=False)
    _subtrees: dict[str, frozenset[str]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_localpart.update({s.localpart: s for s in self.staff})
        children: dict[str | None, list[str]] = {}
        for unit in self.units.values():
            children.setdefault(unit.parent, []).append(unit.id)

        def collect(unit_id: str) -> frozenset[str]:
            below = {unit_id}
            for child in children.get(unit_id, []):
                below |= collect(child)
            self._subtrees[unit_id] = frozenset(below)
            return self._subtrees[unit_id]

        for root in children.get(None, []):
            collect(root)

    def staff_for_localpart(self, localpart: str) -> Staff | None:
        return self._by_localpart.get(localpart)

    def subtree(self, unit_id: str) -> frozenset[str]:
        """The unit and every unit below it."""
        return self._subtrees.get(unit_id, frozenset())

    def in_unit(self, person: Staff | None, unit_id: str) -> bool:
        """Does ``person`` belong to ``unit_id`` or a unit below it?"""
        if person is None:
            return False
        below = self.subtree(unit_id)
        return any(u in below for u in person.units)

    def ancestry(self, unit_id: str) -> list[str]:
        """Root first, ending with ``unit_id``."""
        chain = []
        current: str | None = unit_id
        while current is not None and current in self.units:
            chain.append(current)
            current = self.units[current].parent
        return list(reversed(chain))

    def display_name(self, person: Staff) -> str:
        unit = self.units.get(person.units[0]) if person.units else None
        text = self.display_name_format.format(
            name=person.name,
            unit=unit.name if unit else "",
            title=person.title,
            position=person.position,
            staff_number=person.staff_number,
        )
        # An empty field leaves a dangling separator; drop empty parts.
        parts = [p.strip() for p in text.split("·")]
        return " · ".join(p for p in parts if p)
