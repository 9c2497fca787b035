"""Translate a feed's role labels and person identifiers into role IDs and staff numbers.

This is the one place that decides what counts as a match, so the iCalendar, CSV and FHIR
adapters accept the same things and word their complaints identically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bridges.roster.config import FeedConfig


class Unmapped(Exception):
    """Raised per record so the adapter can attach its own ``where`` and carry on collecting."""


def _lookup(table: Mapping[str, str], key: str) -> str | None:
    if key in table:
        return table[key]
    folded = key.casefold()
    for candidate, value in table.items():
        if candidate.casefold() == folded:
            return value
    return None


def _quoted(values: Sequence[str]) -> str:
    return " / ".join(f"'{v}'" for v in values)


def _clean(values: Sequence[str]) -> list[str]:
    seen: list[str] = []
    for value in values:
        value = value.strip()
        if value and value not in seen:
            seen.append(value)
    return seen


def role_for(labels: Sequence[str], config: FeedConfig) -> str:
    """Several labels may be offered (FHIR text and codes, several CATEGORIES); any one mapping
    suffices, but labels mapping to *different* roles are refused rather than guessed."""
    labels = _clean(labels)
    if not labels:
        raise Unmapped("no role label")
    found = {label: role for label in labels if (role := _lookup(config.roles, label)) is not None}
    if not found:
        if len(labels) == 1:
            raise Unmapped(f"role label '{labels[0]}' is not mapped to a role")
        raise Unmapped(f"none of the role labels {_quoted(labels)} is mapped to a role")
    roles = sorted(set(found.values()))
    if len(roles) > 1:
        labelled = _quoted(list(found))
        raise Unmapped(f"role labels {labelled} map to different roles {_quoted(roles)}")
    label, role = next(iter(found.items()))
    if role not in config.known_roles:
        raise Unmapped(f"role label '{label}' maps to '{role}', which is not a known role")
    return role


def staff_for(identifiers: Sequence[str], config: FeedConfig) -> str:
    """The first identifier that resolves wins, so a feed may offer a display name and an
    e-mail address and the config needs to know only one of them. An identifier that is
    itself a known staff number is accepted even with a staff map, so feeds that already
    carry our numbers (X-STAFF-NUMBER, a staff-number identifier) need no identity map."""
    ids = _clean(identifiers)
    if not ids:
        raise Unmapped("no person identifier")
    staff_map = config.staff or {}
    for ident in ids:
        number = _lookup(staff_map, ident)
        if number is not None:
            if number not in config.known_staff:
                raise Unmapped(
                    f"'{ident}' maps to staff number '{number}', which is not a known staff member"
                )
            return number
    for ident in ids:
        if ident in config.known_staff:
            return ident
    if config.staff is not None:
        raise Unmapped(f"person {_quoted(ids)} is neither in the staff map nor a staff number")
    if len(ids) == 1:
        raise Unmapped(f"unknown staff number '{ids[0]}'")
    raise Unmapped(f"none of {_quoted(ids)} is a known staff number")
