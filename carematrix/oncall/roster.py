"""Who holds a role at an instant: the roster folded into one timeline per role.

Every message to "Cardiology – attending on duty" asks this question, so it has to be cheap.
At construction each role's shifts and overrides are swept once into a piecewise-constant
timeline (sorted segment starts + the holders of each segment); a lookup is then one bisect.
Adjacent segments with the same holders are merged, so a segment boundary is always a real
hand-over, which is what ``next_change`` and the ``!oncall`` listing need.

Rules the timeline follows:

* A shift holds from ``start`` (inclusive) to ``end`` (exclusive): at 08:00 exactly the day
  doctor (08:00–20:00) holds the role and the night doctor (20:00–08:00) no longer does.
* Several people may hold one role at once; holders are ordered by shift start, then staff
  number, so listings and pages are stable from call to call.
* Overrides are applied on top of the rostered holders, in the order they were given, so a
  later override sees the effect of earlier ones (a cover for a cover works). A cover with
  ``replaces=None`` adds a person. A cover with ``replaces=X`` puts the coverer in X's place
  while both are in effect; where X is not holding the role (X's shift ended, X was never
  rostered) it has no effect, rather than silently adding a person nobody asked for.
* A swap is stored as two covers (see :func:`appservice.oncall.swap.swap`): A takes B's shift
  with ``replaces=B`` and B takes A's with ``replaces=A``. The roster needs no swap logic.

Instants are compared in UTC: Python compares two datetimes sharing one ``tzinfo`` by wall
time alone, which orders the repeated hour of a DST fall-back wrongly. Returned instants are
given in the time zone of the argument the caller passed, ready to display.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, tzinfo

from carematrix.oncall.model import Override, Shift

Holders = tuple[str, ...]
Segment = tuple[datetime, datetime, Holders]


class _Timeline:
    """One role: ``holders[i]`` hold the role from ``starts[i]`` until ``starts[i + 1]``.

    Before ``starts[0]`` nobody holds it; the last segment is always empty, because every
    shift ends.
    """

    __slots__ = ("starts", "holders")

    def __init__(self, starts: list[datetime], holders: list[Holders]) -> None:
        self.starts = starts
        self.holders = holders

    def at(self, at_utc: datetime) -> Holders:
        i = bisect_right(self.starts, at_utc) - 1
        return self.holders[i] if i >= 0 else ()


_EMPTY = _Timeline([], [])


def _utc(at: datetime, what: str) -> datetime:
    """Reject naive datetimes: a roster in a hospital's local time read as UTC pages the wrong
    doctor, and ``astimezone`` would quietly read them as the server's local time."""
    if at.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {at!r}")
    return at.astimezone(UTC)


def _in_zone(at: datetime, zone: tzinfo | None) -> datetime:
    return at.astimezone(zone)


def _holders(active_shifts: Iterable[Shift], active_overrides: Iterable[Override]) -> Holders:
    """Rostered holders, then the overrides in the order given (see the module docstring)."""
    holders: list[str] = []
    for shift in sorted(active_shifts, key=lambda s: (s.start, s.staff_number)):
        if shift.staff_number not in holders:
            holders.append(shift.staff_number)
    for override in active_overrides:
        if override.replaces is None:
            if override.staff_number not in holders:
                holders.append(override.staff_number)
        elif override.replaces in holders:
            i = holders.index(override.replaces)
            if override.staff_number in holders:
                del holders[i]
            else:
                holders[i] = override.staff_number
    return tuple(holders)


def _build(shifts: Sequence[Shift], overrides: Sequence[Override]) -> _Timeline:
    """Sweep one role's boundaries in time order, recomputing the (few) concurrent holders at
    each; O(n log n) for the role, which keeps a 10,000-shift rebuild well under a second."""
    starting: dict[datetime, list[int]] = defaultdict(list)
    ending: dict[datetime, list[int]] = defaultdict(list)
    o_starting: dict[datetime, list[int]] = defaultdict(list)
    o_ending: dict[datetime, list[int]] = defaultdict(list)
    for i, s in enumerate(shifts):
        starting[s.start].append(i)
        ending[s.end].append(i)
    for i, o in enumerate(overrides):
        o_starting[o.start].append(i)
        o_ending[o.end].append(i)
    points = sorted(set(starting) | set(ending) | set(o_starting) | set(o_ending))

    active: set[int] = set()
    o_active: set[int] = set()
    starts: list[datetime] = []
    holders: list[Holders] = []
    previous: Holders = ()
    for t in points:
        active.difference_update(ending.get(t, ()))
        active.update(starting.get(t, ()))
        o_active.difference_update(o_ending.get(t, ()))
        o_active.update(o_starting.get(t, ()))
        now = _holders((shifts[i] for i in active), (overrides[i] for i in sorted(o_active)))
        if now != previous:
            starts.append(t)
            holders.append(now)
            previous = now
    return _Timeline(starts, holders)


def _normalised_shift(s: Shift) -> Shift:
    where = s.source or s.staff_number
    start, end = _utc(s.start, f"shift start ({where})"), _utc(s.end, f"shift end ({where})")
    if end <= start:
        raise ValueError(f"shift {where} for {s.role} does not end after it starts")
    return Shift(s.role, s.staff_number, start, end, s.source)


def _normalised_override(o: Override) -> Override:
    start, end = _utc(o.start, "override start"), _utc(o.end, "override end")
    if end <= start:
        raise ValueError(f"override for {o.role} by {o.by} does not end after it starts")
    return Override(o.role, o.staff_number, start, end, o.replaces, o.by, o.kind)


class Roster:
    """Immutable index of shifts + overrides for fast lookups.

    Immutable so that a roster feed reload or a ``!oncall cover`` can build the next index
    aside and swap it in at once: a lookup never sees a half-applied change.
    """

    __slots__ = ("_shifts", "_overrides", "_timelines", "_staff_roles")

    def __init__(self, shifts: Iterable[Shift], overrides: Iterable[Override] = ()) -> None:
        self._shifts: dict[str, list[Shift]] = defaultdict(list)
        self._overrides: dict[str, list[Override]] = defaultdict(list)
        for s in shifts:
            self._shifts[s.role].append(_normalised_shift(s))
        for o in overrides:
            self._overrides[o.role].append(_normalised_override(o))
        self._timelines: dict[str, _Timeline] = {}
        self._staff_roles: dict[str, set[str]] = defaultdict(set)
        self._index(set(self._shifts) | set(self._overrides))

    def _index(self, roles: Iterable[str]) -> None:
        for role in roles:
            timeline = _build(self._shifts.get(role, []), self._overrides.get(role, []))
            self._timelines[role] = timeline
            for holders in timeline.holders:
                for staff_number in holders:
                    self._staff_roles[staff_number].add(role)

    def with_overrides(self, overrides: Iterable[Override]) -> Roster:
        """A new roster with ``overrides`` added after the existing ones; only the roles they
        touch are re-swept, so a ``!oncall cover`` does not rebuild the whole hospital."""
        added = [_normalised_override(o) for o in overrides]
        new = object.__new__(Roster)
        new._shifts = self._shifts
        new._overrides = defaultdict(list, {r: list(os) for r, os in self._overrides.items()})
        for o in added:
            new._overrides[o.role].append(o)
        new._timelines = dict(self._timelines)
        new._staff_roles = defaultdict(set)
        touched = {o.role for o in added}
        for role, timeline in new._timelines.items():
            if role in touched:
                continue
            for holders in timeline.holders:
                for staff_number in holders:
                    new._staff_roles[staff_number].add(role)
        new._index(touched)
        return new

    def on_duty(self, role: str, at: datetime) -> Holders:
        """Staff numbers holding ``role`` at ``at``, overrides applied; () for a roster gap."""
        return self._timelines.get(role, _EMPTY).at(_utc(at, "at"))

    def next_change(self, role: str, after: datetime) -> datetime | None:
        """The first instant strictly after ``after`` at which the holders of ``role`` change
        (when to schedule the next hand-over), or None if they never change again."""
        timeline = self._timelines.get(role, _EMPTY)
        i = bisect_right(timeline.starts, _utc(after, "after"))
        return _in_zone(timeline.starts[i], after.tzinfo) if i < len(timeline.starts) else None

    def holders_between(self, role: str, start: datetime, end: datetime) -> list[Segment]:
        """The piecewise timeline of ``role`` over [start, end): consecutive (from, until,
        holders) segments covering the whole interval, gaps included as empty holders, so a
        "now / next" listing can show a gap rather than skip over it."""
        start_utc, end_utc = _utc(start, "start"), _utc(end, "end")
        timeline = self._timelines.get(role, _EMPTY)
        zone = start.tzinfo
        segments: list[Segment] = []
        i = bisect_right(timeline.starts, start_utc)
        current = timeline.holders[i - 1] if i > 0 else ()
        cursor = start_utc
        while cursor < end_utc:
            boundary = timeline.starts[i] if i < len(timeline.starts) else end_utc
            until = min(boundary, end_utc)
            segments.append((_in_zone(cursor, zone), _in_zone(until, zone), current))
            if i < len(timeline.holders):
                current = timeline.holders[i]
            cursor = until
            i += 1
        return segments

    def gaps(self, role: str, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """Intervals within [start, end) when nobody holds ``role``: what the roster office must
        fill before the escalation fallback has to."""
        return [(a, b) for a, b, holders in self.holders_between(role, start, end) if not holders]

    def roles_of(self, staff_number: str, at: datetime) -> tuple[str, ...]:
        """The roles ``staff_number`` holds at ``at``, sorted (for "!oncall me" and quiet hours)."""
        at_utc = _utc(at, "at")
        roles = self._staff_roles.get(staff_number, ())
        return tuple(sorted(r for r in roles if staff_number in self._timelines[r].at(at_utc)))

    def is_on_duty(self, staff_number: str, at: datetime) -> bool:
        """Whether quiet hours apply: off duty means holding no role at all."""
        return bool(self.roles_of(staff_number, at))

    def roles(self) -> tuple[str, ...]:
        """Every role with a shift or an override, sorted."""
        return tuple(sorted(self._timelines))
