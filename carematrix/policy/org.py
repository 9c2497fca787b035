"""The organisation part of the policy: ``hospital:``, ``roles:``, ``units:`` and ``staff:``.

Staff numbers, unit IDs and role IDs defined here are what every other section refers to, so
this section is built first and the others are checked against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from carematrix.policy.checker import Sections
from carematrix.policy.yamlsrc import LineList

SECTIONS = ("hospital", "roles", "units", "staff")
STAFF_NUMBER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
IDENT_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
DISPLAY_NAME_FIELDS = ("name", "unit", "title", "position", "staff_number")
DEFAULT_DISPLAY_NAME_FORMAT = "{name} · {unit} · {title}"


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
class Org:
    """The hospital, its roles (role ID -> description), units by ID and staff."""

    hospital_name: str
    display_name_format: str
    roles: dict[str, str]
    units: dict[str, Unit]
    staff: tuple[Staff, ...]

    @property
    def staff_numbers(self) -> set[str]:
        return {s.staff_number for s in self.staff}


def parse_org(sections: Sections) -> Org:
    """Build the organisation from its sections; errors go to ``sections.errors``."""
    hospital_name, name_format = _hospital(sections)
    roles = _roles(sections)
    units = _units(sections)
    staff = _staff(sections, roles, units)
    return Org(hospital_name, name_format, roles, units, tuple(staff))


def _hospital(sections: Sections) -> tuple[str, str]:
    if sections.get("hospital") is None:
        sections.missing("hospital")
    found = sections.mapping_section("hospital")
    if found is None:
        return "", DEFAULT_DISPLAY_NAME_FORMAT
    data, chk = found
    chk.keys(data, ("name", "display_name_format"), "'hospital'")
    name = chk.text(data, "name", "'hospital'") or ""
    fmt = chk.text(data, "display_name_format", "'hospital'", required=False) or DEFAULT_DISPLAY_NAME_FORMAT
    chk.template(data.line_of("display_name_format"), fmt, DISPLAY_NAME_FIELDS, "'display_name_format'")
    return name, fmt


def _roles(sections: Sections) -> dict[str, str]:
    found = sections.mapping_section("roles")
    if found is None:
        return {}
    data, chk = found
    roles = {}
    for role_id, spec in data.items():
        rline = data.line_of(role_id)
        if not IDENT_RE.match(role_id):
            chk.error(rline, f"role id '{role_id}' must be lowercase letters, digits, '-' or '_'")
            continue
        description = ""
        if spec is not None:
            spec_map = chk.mapping(spec, rline, f"role '{role_id}'")
            if spec_map is not None:
                chk.keys(spec_map, ("description",), f"role '{role_id}'")
                description = chk.text(spec_map, "description", f"role '{role_id}'", False) or ""
        roles[role_id] = description
    return roles


def _units(sections: Sections) -> dict[str, Unit]:
    units: dict[str, Unit] = {}
    found = sections.list_section("units", "units (each with id and name)")
    if found is None:
        return units
    value, chk = found

    def walk(items: LineList, parent: str | None) -> None:
        for data in chk.items(items, "a unit"):
            chk.keys(data, ("id", "name", "children"), "a unit")
            unit_id = chk.text(data, "id", "a unit")
            name = chk.text(data, "name", f"unit '{unit_id}'")
            if unit_id is None:
                continue
            if not IDENT_RE.match(unit_id):
                chk.error(data.line_of("id"), f"unit id '{unit_id}' must be lowercase letters, digits, '-' or '_'")
            elif unit_id in units:
                chk.error(data.line_of("id"), f"unit id '{unit_id}' is used twice")
            else:
                units[unit_id] = Unit(unit_id, name or unit_id, parent)
            children = data.get("children")
            if children is None:
                continue
            if not isinstance(children, LineList):
                chk.error(data.line_of("children"), f"'children' of unit '{unit_id}' must be a list of units")
                continue
            walk(children, unit_id)

    walk(value, None)
    return units


def _staff(sections: Sections, roles: dict[str, str], units: dict[str, Unit]) -> list[Staff]:
    staff: list[Staff] = []
    found = sections.list_section("staff", "staff members")
    if found is None:
        return staff
    value, chk = found
    seen: dict[str, int] = {}
    for data in chk.items(value, "a staff member"):
        allowed = ("staff_number", "name", "units", "position", "title", "roles")
        chk.keys(data, allowed, "a staff member")
        raw_number = data.get("staff_number")
        number = str(raw_number).strip() if isinstance(raw_number, str | int) else None
        if number is None:
            chk.error(data.line, "a staff member is missing required key 'staff_number'")
            continue
        what = f"staff member {number}"
        if not STAFF_NUMBER_RE.match(number):
            chk.error(data.line_of("staff_number"), f"staff number '{number}' may only use letters, digits, '.', '_' and '-'")
            continue
        if number.lower() in seen:
            chk.error(data.line_of("staff_number"), f"staff number '{number}' is used twice (first at line {seen[number.lower()]})")
            continue
        seen[number.lower()] = data.line_of("staff_number")
        name = chk.text(data, "name", what)
        position = chk.text(data, "position", what)
        title = chk.text(data, "title", what, required=False) or ""
        member_units = chk.text_list(data, "units", what)
        if not member_units:
            chk.error(data.line, f"{what} must belong to at least one unit ('units')")
        for unit_id, uline in member_units:
            if unit_id not in units:
                chk.error(uline, f"{what} names unknown unit '{unit_id}'; known units: {', '.join(sorted(units)) or 'none'}")
        member_roles = chk.text_list(data, "roles", what)
        for role_id, rline in member_roles:
            if role_id not in roles:
                chk.error(rline, f"{what} has unknown role '{role_id}'; declared roles: {', '.join(sorted(roles)) or 'none'}")
        staff.append(
            Staff(
                staff_number=number,
                name=name or number,
                units=tuple(u for u, _ in member_units),
                position=position or "",
                title=title,
                roles=frozenset(r for r, _ in member_roles),
            )
        )
    return staff
