"""The policy in force, as frozen plain data: one typed part per section, assembled.

Everything that decides (Synapse callbacks, the appservice) reads this model and nothing
else, so a rule means the same thing in every process. The sections' own classes live beside
their builders: ``org`` (hospital, roles, units, staff), ``rooms`` (room classes, defaults,
standard rooms, burn-after-read), ``oncall``, ``clinical``, ``devices`` and ``voice``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from carematrix.policy.clinical import ClinicalPolicy
from carematrix.policy.devices import DevicePolicy
from carematrix.policy.oncall import OncallPolicy
from carematrix.policy.org import DEFAULT_DISPLAY_NAME_FORMAT, Staff, Unit
from carematrix.policy.rooms import DEFAULT_BURN, BurnPolicy, RoomClass, StandardRoom
from carematrix.policy.voice import DEFAULT_VOICE, VoicePolicy


@dataclass(frozen=True)
class Policy:
    hospital_name: str
    roles: dict[str, str]
    units: dict[str, Unit]
    staff: tuple[Staff, ...]
    room_classes: dict[str, RoomClass]
    digest: str
    display_name_format: str = DEFAULT_DISPLAY_NAME_FORMAT
    standard_rooms: tuple[StandardRoom, ...] = ()
    # Class given to rooms created without one, and to direct chats.
    default_room_class: str | None = None
    default_direct_class: str | None = None
    # Applies to messages their sender flags burn-after-read in rooms without a burn policy.
    burn_defaults: BurnPolicy = DEFAULT_BURN
    # The ``oncall:`` section, if the hospital has one.
    oncall: OncallPolicy | None = None
    # The ``clinical:`` section (HIS routing), if the hospital has one.
    clinical: ClinicalPolicy | None = None
    # The ``devices:`` section (nurse-call buttons, badges, bedside terminals), if any.
    devices: DevicePolicy | None = None
    # The ``voice:`` section (transcription of voice messages); defaults when absent.
    voice: VoicePolicy = DEFAULT_VOICE
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
