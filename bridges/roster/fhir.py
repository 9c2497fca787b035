"""FHIR R4 roster feeds: busy Slots -> Schedule -> PractitionerRole -> Practitioner.

A Slot is a period of duty only when it is busy (or tentatively busy); free and unavailable
slots describe capacity, not who is on call. Schedules and PractitionerRoles are checked
once, when the first busy Slot reaches them, so one bad role is one error and roles that no
duty Slot uses do not need a mapping.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bridges.roster.config import FeedConfig
from bridges.roster.fhir_bundle import (
    INSTANT_HINT,
    Bundle,
    Entry,
    instant,
    load_bundle,
    reference_of,
    referenced_type,
)
from bridges.roster.mapping import Unmapped, role_for, staff_for
from bridges.roster.times import show
from carematrix.oncall.model import FeedError, FeedInvalid, Shift

DUTY = ("busy", "busy-tentative")
NOT_DUTY = ("free", "busy-unavailable", "entered-in-error")
Holder = tuple[str, str]  # (role ID, staff number)


class _Chain:
    """Walks references from Slots with caches, collecting every problem on the way."""

    def __init__(self, bundle: Bundle, config: FeedConfig) -> None:
        self.bundle = bundle
        self.config = config
        self.errors: list[FeedError] = list(bundle.errors)
        self.roles: dict[str, Holder | None] = {}
        self.schedules: dict[str, list[Holder] | None] = {}

    def fail(self, entry: Entry, message: str) -> None:
        error = FeedError(entry.where, message)
        if error not in self.errors:
            self.errors.append(error)

    def follow(self, entry: Entry, field: str, value: object, want: str) -> Entry | None:
        reference = reference_of(value)
        if reference is None:
            self.fail(entry, f"{field} {'is missing' if value is None else 'has no reference'}")
            return None
        target = self.bundle.resolve(reference)
        if target is None:
            self.fail(entry, f"{field} points to '{reference}', which is not in the bundle")
        elif target.type != want:
            self.fail(entry, f"{field} points to '{reference}', which is a {target.type}, "
                             f"not a {want}")
            return None
        return target

    def _role_labels(self, role: Entry) -> list[str]:
        labels: list[str] = []
        for concept in role.resource.get("code") or []:
            if not isinstance(concept, dict):
                continue
            labels.append(str(concept.get("text") or ""))
            labels.extend(str(c.get("code") or "") for c in concept.get("coding") or []
                          if isinstance(c, dict))
        return [label for label in labels if label.strip()]

    def _person_ids(self, role: Entry) -> list[str] | None:
        """Practitioner identifiers (restricted to the configured system), then its id; a
        Practitioner outside the bundle is known by its reference id alone."""
        value = role.resource.get("practitioner")
        reference = reference_of(value)
        logical = value.get("identifier") if isinstance(value, dict) else None
        ids: list[str] = []
        if reference is not None:
            target = self.bundle.resolve(reference)
            if target is None:
                ids.append(reference.split("/_history/")[0].rstrip("/").split("/")[-1])
            elif target.type != "Practitioner":
                self.fail(role, f"PractitionerRole.practitioner points to '{reference}', "
                                f"which is a {target.type}, not a Practitioner")
                return None
            else:
                ids.extend(self._identifiers(target.resource.get("identifier")))
                ids.append(str(target.resource.get("id") or ""))
        ids.extend(self._identifiers([logical] if logical else []))
        if not any(i.strip() for i in ids):
            self.fail(role, "PractitionerRole.practitioner is missing")
            return None
        return ids

    def _identifiers(self, identifiers: object) -> list[str]:
        system = self.config.staff_identifier_system
        if not isinstance(identifiers, list):
            return []
        return [str(i["value"]) for i in identifiers if isinstance(i, dict)
                and i.get("value") and (system is None or i.get("system") == system)]

    def role(self, entry: Entry) -> Holder | None:
        if entry.where not in self.roles:
            self.roles[entry.where] = None
            labels = self._role_labels(entry)
            ids = self._person_ids(entry)
            role = staff = None
            if not labels:
                self.fail(entry, "PractitionerRole.code is missing")
            else:
                try:
                    role = role_for(labels, self.config)
                except Unmapped as exc:
                    self.fail(entry, str(exc))
            if ids is not None:
                try:
                    staff = staff_for(ids, self.config)
                except Unmapped as exc:
                    self.fail(entry, str(exc))
            if role is not None and staff is not None:
                self.roles[entry.where] = (role, staff)
        return self.roles[entry.where]

    def schedule(self, entry: Entry) -> list[Holder] | None:
        """Actors other than PractitionerRoles (a Location, a HealthcareService) are allowed
        and ignored, even when the export leaves them out of the bundle."""
        if entry.where in self.schedules:
            return self.schedules[entry.where]
        actors = entry.resource.get("actor")
        if not isinstance(actors, list) or not actors:
            self.fail(entry, "Schedule.actor is missing")
            actors = []
        holders: list[Holder] = []
        ok = True
        for number, actor in enumerate(actors):
            reference = reference_of(actor)
            target = self.bundle.resolve(reference) if reference is not None else None
            if target is None and reference is not None and referenced_type(reference) in (
                    None, "PractitionerRole"):
                self.fail(entry, f"Schedule.actor[{number}] points to '{reference}', "
                                 "which is not in the bundle")
                ok = False
            if target is None or target.type != "PractitionerRole":
                continue
            holder = self.role(target)
            ok = ok and holder is not None
            if holder is not None:
                holders.append(holder)
        if ok and actors and not holders:
            self.fail(entry, "Schedule.actor names no PractitionerRole")
        self.schedules[entry.where] = holders if ok and holders else None
        return self.schedules[entry.where]

    def _time(self, slot: Entry, field: str) -> datetime | None:
        value = slot.resource.get(field)
        parsed = instant(value)
        if value is None:
            self.fail(slot, f"Slot.{field} is missing")
        elif parsed is None:
            self.fail(slot, f"Slot.{field} '{value}' is not {INSTANT_HINT}")
        return parsed

    def slot(self, slot: Entry) -> list[Shift]:
        status = slot.resource.get("status")
        if status in NOT_DUTY:
            return []
        if status not in DUTY:
            known = ", ".join(DUTY + NOT_DUTY)
            self.fail(slot, "Slot.status is missing" if status is None else
                      f"Slot.status '{status}' is not one of {known}")
            return []
        start, end = self._time(slot, "start"), self._time(slot, "end")
        if start is not None and end is not None and end <= start:
            self.fail(slot, f"end {show(end)} is not after start {show(start)}")
        schedule = self.follow(slot, "Slot.schedule", slot.resource.get("schedule"), "Schedule")
        holders = self.schedule(schedule) if schedule is not None else None
        if holders is None or start is None or end is None or end <= start:
            return []
        return [Shift(role, staff, start.astimezone(UTC), end.astimezone(UTC), slot.where)
                for role, staff in holders]


def parse_fhir(data: bytes, source: str, config: FeedConfig) -> list[Shift]:
    """Shifts from the busy Slots of a FHIR R4 Bundle; ``where`` in errors is
    ``source#Type/id`` (or ``source#entry[i]`` for a resource without id)."""
    bundle = load_bundle(data, source)
    chain = _Chain(bundle, config)
    shifts: list[Shift] = []
    for slot in bundle.of_type("Slot"):
        shifts.extend(chain.slot(slot))
    if chain.errors:
        raise FeedInvalid(chain.errors)
    return shifts
