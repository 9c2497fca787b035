"""Load and validate a policy directory (``policies/*.yaml``) into a ``Policy``.

Every problem is collected, not just the first, so ``carematrix policy check`` can show an
admin all of them at once. A directory either loads completely or not at all: callers keep
the last good policy when this raises.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from carematrix.policy.errors import PolicyError, PolicyInvalid
from carematrix.policy.model import (
    DEFAULT_BURN,
    DISPLAY_NAME_FIELDS,
    ENCRYPTION_STANCES,
    HISTORY_VISIBILITIES,
    IDENT_RE,
    JOIN_RULES,
    OTHER_FILES,
    POWER_LEVEL_KEYS,
    SCOPES,
    STAFF_NUMBER_RE,
    Audience,
    BurnPolicy,
    Policy,
    Protection,
    RoomClass,
    Staff,
    StandardRoom,
    Unit,
)
from carematrix.policy.yamlsrc import LineDict, LineList, YamlSyntaxError, parse_yaml

SECTIONS = (
    "hospital", "roles", "units", "staff", "room_classes", "room_defaults", "standard_rooms",
    "burn_after_read", "oncall", "clinical",
)
DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
ALIAS_RE = re.compile(r"^[a-z0-9._=-]+$")
POLICY_SUFFIXES = (".yaml", ".yml")


def policy_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in POLICY_SUFFIXES and p.is_file())


def policy_fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detector (name, mtime, size) polled by long-running processes."""
    try:
        files = policy_files(directory)
    except OSError:
        return ()
    out = []
    for p in files:
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


class _Checker:
    """Collects errors for one file while walking its parsed YAML."""

    def __init__(self, file: str, errors: list[PolicyError]) -> None:
        self.file = file
        self.errors = errors

    def error(self, line: int, message: str) -> None:
        self.errors.append(PolicyError(self.file, line, message))

    def mapping(self, value: Any, line: int, what: str) -> LineDict | None:
        if not isinstance(value, LineDict):
            self.error(line, f"{what} must be a mapping (key: value), got {_kind(value)}")
            return None
        return value

    def keys(self, data: LineDict, allowed: Iterable[str], what: str) -> None:
        allowed = tuple(allowed)
        for key in data:
            if key not in allowed:
                self.error(
                    data.line_of(key),
                    f"unknown key '{key}' in {what}; valid keys are: {', '.join(allowed)}",
                )

    def text(self, data: LineDict, key: str, what: str, required: bool = True) -> str | None:
        if key not in data:
            if required:
                self.error(data.line, f"{what} is missing required key '{key}'")
            return None
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            self.error(data.line_of(key), f"'{key}' in {what} must be non-empty text")
            return None
        return value.strip()

    def text_list(self, data: LineDict, key: str, what: str) -> list[tuple[str, int]]:
        """A list of strings (a single string is accepted as a one-item list)."""
        if key not in data:
            return []
        value = data[key]
        if isinstance(value, str):
            return [(value, data.line_of(key))]
        if not isinstance(value, LineList):
            self.error(data.line_of(key), f"'{key}' in {what} must be a list of text")
            return []
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str | int) or isinstance(item, bool):
                self.error(value.line_of(i), f"'{key}' in {what} must list text, got {_kind(item)}")
                continue
            out.append((str(item), value.line_of(i)))
        return out


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", LineDict: "a mapping", list: "a list", LineList: "a list"}.get(
        type(value), f"{type(value).__name__} {value!r}"
    )


class _Builder:
    def __init__(self) -> None:
        self.errors: list[PolicyError] = []
        self.sections: dict[str, tuple[Any, _Checker, int]] = {}

    def add_file(self, name: str, text: str) -> None:
        checker = _Checker(name, self.errors)
        try:
            doc = parse_yaml(text)
        except YamlSyntaxError as exc:
            checker.error(exc.line, exc.message)
            return
        if doc is None:
            return
        data = checker.mapping(doc, 1, "a policy file")
        if data is None:
            return
        checker.keys(data, SECTIONS, "a policy file (top level)")
        for key in SECTIONS:
            if key not in data:
                continue
            if key in self.sections:
                _, other, other_line = self.sections[key]
                checker.error(
                    data.line_of(key),
                    f"section '{key}' is already defined in {other.file}:{other_line}",
                )
                continue
            self.sections[key] = (data[key], checker, data.line_of(key))

    def section(self, key: str) -> tuple[Any, _Checker, int] | None:
        return self.sections.get(key)

    def list_section(self, key: str, what: str) -> tuple[LineList, _Checker] | None:
        """A section that must be a list; None (after reporting) if absent or not a list."""
        found = self.section(key)
        if found is None:
            return None
        value, chk, line = found
        if not isinstance(value, LineList):
            chk.error(line, f"'{key}' must be a list of {what}")
            return None
        return value, chk

    def build(self, digest: str, first_file: str) -> Policy:
        hospital_name, name_format = self._hospital(first_file)
        roles = self._roles()
        units = self._units()
        staff = self._staff(roles, units)
        room_classes = self._room_classes(roles, {s.staff_number for s in staff})
        default_room, default_direct = self._room_defaults(room_classes)
        standard_rooms = self._standard_rooms(room_classes, units)
        burn_defaults = self._burn_defaults()
        oncall = self._oncall(units, {s.staff_number for s in staff}, roles)
        clinical = self._clinical(units, set(oncall.roles) if oncall else set())
        if self.errors:
            raise PolicyInvalid(self.errors)
        return Policy(
            hospital_name=hospital_name,
            roles=roles,
            units=units,
            staff=tuple(staff),
            room_classes=room_classes,
            digest=digest,
            display_name_format=name_format,
            standard_rooms=tuple(standard_rooms),
            default_room_class=default_room,
            default_direct_class=default_direct,
            burn_defaults=burn_defaults,
            oncall=oncall,
            clinical=clinical,
        )

    def _hospital(self, first_file: str) -> tuple[str, str]:
        default_format = "{name} · {unit} · {title}"
        found = self.section("hospital")
        if found is None:
            self.errors.append(PolicyError(first_file, 1, "no 'hospital' section in any policy file"))
            return "", default_format
        value, chk, line = found
        data = chk.mapping(value, line, "'hospital'")
        if data is None:
            return "", default_format
        chk.keys(data, ("name", "display_name_format"), "'hospital'")
        name = chk.text(data, "name", "'hospital'") or ""
        fmt = chk.text(data, "display_name_format", "'hospital'", required=False) or default_format
        self._check_template(chk, data.line_of("display_name_format"), fmt, DISPLAY_NAME_FIELDS, "'display_name_format'")
        return name, fmt

    @staticmethod
    def _check_template(chk: _Checker, line: int, template: str, fields: tuple[str, ...], what: str) -> bool:
        try:
            used = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as exc:
            chk.error(line, f"{what} is not a valid template: {exc}")
            return False
        bad = [f for f in used if f not in fields]
        if bad:
            chk.error(line, f"{what} uses unknown field {{{bad[0]}}}; available: {', '.join('{' + f + '}' for f in fields)}")
            return False
        return True

    def _roles(self) -> dict[str, str]:
        found = self.section("roles")
        if found is None:
            return {}
        value, chk, line = found
        data = chk.mapping(value, line, "'roles'")
        if data is None:
            return {}
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

    def _units(self) -> dict[str, Unit]:
        units: dict[str, Unit] = {}
        found = self.list_section("units", "units (each with id and name)")
        if found is None:
            return units
        value, chk = found

        def walk(items: LineList, parent: str | None) -> None:
            for i, item in enumerate(items):
                data = chk.mapping(item, items.line_of(i), "a unit")
                if data is None:
                    continue
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

    def _staff(self, roles: dict[str, str], units: dict[str, Unit]) -> list[Staff]:
        staff: list[Staff] = []
        found = self.list_section("staff", "staff members")
        if found is None:
            return staff
        value, chk = found
        seen: dict[str, int] = {}
        for i, item in enumerate(value):
            data = chk.mapping(item, value.line_of(i), "a staff member")
            if data is None:
                continue
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

    def _audience(self, chk: _Checker, data: LineDict, key: str, what: str, roles: dict[str, str], staff_numbers: set[str]) -> Audience | None:
        if key not in data:
            return None
        spec = chk.mapping(data[key], data.line_of(key), f"'{key}' of {what}")
        if spec is None:
            return Audience()  # invalid: reported; nobody admitted (fail closed)
        chk.keys(spec, ("roles", "staff"), f"'{key}' of {what}")
        role_ids = chk.text_list(spec, "roles", f"'{key}' of {what}")
        for role_id, line in role_ids:
            if role_id not in roles:
                chk.error(line, f"'{key}' of {what} names unknown role '{role_id}'; declared roles: {', '.join(sorted(roles)) or 'none'}")
        numbers = chk.text_list(spec, "staff", f"'{key}' of {what}")
        for number, line in numbers:
            if number not in staff_numbers:
                chk.error(line, f"'{key}' of {what} names unknown staff number '{number}'")
        return Audience(frozenset(r for r, _ in role_ids), frozenset(n for n, _ in numbers))

    def _room_classes(self, roles: dict[str, str], staff_numbers: set[str]) -> dict[str, RoomClass]:
        found = self.section("room_classes")
        classes: dict[str, RoomClass] = {}
        if found is None:
            return classes
        value, chk, line = found
        data = chk.mapping(value, line, "'room_classes'")
        if data is None:
            return classes
        for class_id, spec in data.items():
            cline = data.line_of(class_id)
            what = f"room class '{class_id}'"
            if not IDENT_RE.match(class_id):
                chk.error(cline, f"room class id '{class_id}' must be lowercase letters, digits, '-' or '_'")
                continue
            spec_map = chk.mapping(spec, cline, what)
            if spec_map is None:
                continue
            chk.keys(
                spec_map,
                ("description", "post", "create", "reactions", "scope", "join_rules",
                 "history_visibility", "min_power_levels", "max_members", "protection"),
                what,
            )
            reactions = spec_map.get("reactions", True)
            if not isinstance(reactions, bool):
                chk.error(spec_map.line_of("reactions"), f"'reactions' of {what} must be true or false")
                reactions = False
            scope = spec_map.get("scope", "hospital")
            if scope not in SCOPES:
                chk.error(spec_map.line_of("scope"), f"'scope' of {what} must be one of: {', '.join(SCOPES)}")
                scope = "unit"  # the narrower one: fail closed
            defaults = RoomClass("x", "", None, None)
            join_rules = self._choices(chk, spec_map, "join_rules", what, JOIN_RULES) or defaults.join_rules
            history = self._choices(chk, spec_map, "history_visibility", what, HISTORY_VISIBILITIES) or defaults.history_visibility
            classes[class_id] = RoomClass(
                id=class_id,
                description=chk.text(spec_map, "description", what, required=False) or "",
                post=self._audience(chk, spec_map, "post", what, roles, staff_numbers),
                create=self._audience(chk, spec_map, "create", what, roles, staff_numbers),
                reactions=reactions,
                scope=scope,
                join_rules=join_rules,
                history_visibility=history,
                min_power_levels=self._power_floors(chk, spec_map, what),
                max_members=self._max_members(chk, spec_map, what),
                protection=self._protection(chk, spec_map, what),
            )
        return classes

    def _protection(self, chk: _Checker, data: LineDict, what: str) -> Protection:
        if "protection" not in data:
            return Protection()
        spec = chk.mapping(data["protection"], data.line_of("protection"), f"'protection' of {what}")
        if spec is None:
            return Protection()
        chk.keys(
            spec,
            ("no_forward", "watermark", "other_files", "no_screenshot", "burn_after_read",
             "retention", "encryption"),
            f"'protection' of {what}",
        )
        flags = {}
        for key in ("no_forward", "watermark", "no_screenshot"):
            value = spec.get(key, False)
            if not isinstance(value, bool):
                chk.error(spec.line_of(key), f"'protection.{key}' of {what} must be true or false")
                value = True  # fail closed
            flags[key] = value
        other_files = spec.get("other_files", "audited")
        if other_files not in OTHER_FILES:
            chk.error(
                spec.line_of("other_files"),
                f"'protection.other_files' of {what} must be one of: {', '.join(OTHER_FILES)}",
            )
            other_files = "block"
        encryption = spec.get("encryption", "server")
        if encryption not in ENCRYPTION_STANCES:
            chk.error(
                spec.line_of("encryption"),
                f"'protection.encryption' of {what} must be one of: {', '.join(ENCRYPTION_STANCES)}",
            )
            encryption = "server"
        elif encryption != "server" and (flags["watermark"] or flags["no_forward"]):
            needs = " and ".join(k for k in ("watermark", "no_forward") if flags[k])
            chk.error(
                spec.line_of("encryption"),
                f"'protection.encryption: {encryption}' of {what} cannot be combined with {needs}: "
                "the server must see a message to watermark its images or recognise it when it "
                "is forwarded, and end-to-end encryption hides it from the server. Use "
                "'encryption: server' or drop " + needs,
            )
        burn = None
        if "burn_after_read" in spec:
            burn = self._burn_policy(chk, spec, "burn_after_read", f"'protection' of {what}", DEFAULT_BURN)
        retention = None
        if spec.get("retention") not in (None, "keep"):
            retention = self._duration(
                chk, spec, "retention", f"'protection' of {what}", minimum=10, unit_required=True
            )
        return Protection(
            no_forward=flags["no_forward"],
            watermark=flags["watermark"],
            other_files=other_files,
            no_screenshot=flags["no_screenshot"],
            burn=burn,
            retention_seconds=retention,
            encryption=encryption,
        )

    def _duration(
        self, chk: _Checker, data: LineDict, key: str, what: str, minimum: int = 1, unit_required: bool = False
    ) -> int | None:
        """Seconds from ``90``, ``30s``, ``15m``, ``24h`` or ``180d``. Where a misread unit
        destroys data (retention: ``180`` meant as days would purge after three minutes), a
        bare number is refused."""
        value = data.get(key)
        text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
        match = DURATION_RE.match(text)
        if match and unit_required and not match.group(2):
            chk.error(
                data.line_of(key),
                f"'{key}' of {what} needs a unit: write {text.strip()}d for days, {text.strip()}h for hours "
                "(a bare number would mean seconds)",
            )
            return None
        if not match:
            chk.error(
                data.line_of(key),
                f"'{key}' of {what} must be a duration like 30s, 15m, 24h or 180d, got {_kind(value)}",
            )
            return None
        seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        if seconds < minimum:
            chk.error(data.line_of(key), f"'{key}' of {what} must be at least {minimum} seconds")
            return None
        return seconds

    def _burn_policy(
        self, chk: _Checker, data: LineDict, key: str, what: str, default: BurnPolicy
    ) -> BurnPolicy | None:
        value = data[key]
        if value is False or value is None:
            return None
        if value is True:
            return default
        spec = chk.mapping(value, data.line_of(key), f"'{key}' of {what}")
        if spec is None:
            return default
        chk.keys(spec, ("grace", "ttl"), f"'{key}' of {what}")
        grace = self._duration(chk, spec, "grace", f"'{key}' of {what}", minimum=0) if "grace" in spec else None
        ttl = self._duration(chk, spec, "ttl", f"'{key}' of {what}") if "ttl" in spec else None
        return BurnPolicy(
            grace_seconds=default.grace_seconds if grace is None else grace,
            ttl_seconds=default.ttl_seconds if ttl is None else ttl,
        )

    def _clinical(self, units: dict[str, Unit], oncall_roles: set[str]) -> Any:
        found = self.section("clinical")
        if found is None:
            return None
        from carematrix.clinical_policy import load_clinical

        value, chk, line = found
        return load_clinical(value, chk, line, units, oncall_roles)

    def _oncall(self, units: dict[str, Unit], staff: set[str], roles: dict[str, str]) -> Any:
        found = self.section("oncall")
        if found is None:
            return None
        from carematrix.policy.oncall_loader import load_oncall

        value, chk, line = found
        return load_oncall(self, value, chk, line, units, staff, roles)

    def _burn_defaults(self) -> BurnPolicy:
        found = self.section("burn_after_read")
        if found is None:
            return DEFAULT_BURN
        value, chk, line = found
        holder = LineDict({"burn_after_read": value})
        holder.key_lines = {"burn_after_read": line}
        holder.line = line
        return self._burn_policy(chk, holder, "burn_after_read", "the policy", DEFAULT_BURN) or DEFAULT_BURN

    def _choices(self, chk: _Checker, data: LineDict, key: str, what: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        values = chk.text_list(data, key, what)
        if key in data and not values:
            chk.error(data.line_of(key), f"'{key}' of {what} must list at least one of: {', '.join(allowed)}")
        for value, line in values:
            if value not in allowed:
                chk.error(line, f"'{key}' of {what}: '{value}' is not one of {', '.join(allowed)}")
        return tuple(v for v, _ in values if v in allowed)

    def _power_floors(self, chk: _Checker, data: LineDict, what: str) -> tuple[tuple[str, int], ...]:
        if "min_power_levels" not in data:
            return ()
        spec = chk.mapping(data["min_power_levels"], data.line_of("min_power_levels"), f"'min_power_levels' of {what}")
        if spec is None:
            return ()
        floors = []
        for key, level in spec.items():
            if key not in POWER_LEVEL_KEYS:
                chk.error(spec.line_of(key), f"'min_power_levels' of {what}: unknown key '{key}'; valid keys: {', '.join(POWER_LEVEL_KEYS)}")
            elif not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 100:
                chk.error(spec.line_of(key), f"'min_power_levels.{key}' of {what} must be a whole number from 0 to 100")
            else:
                floors.append((key, level))
        return tuple(sorted(floors))

    def _max_members(self, chk: _Checker, data: LineDict, what: str) -> int | None:
        value = data.get("max_members")
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 2:
            chk.error(data.line_of("max_members"), f"'max_members' of {what} must be a whole number of at least 2")
            return 2
        return value

    def _room_defaults(self, classes: dict[str, RoomClass]) -> tuple[str | None, str | None]:
        found = self.section("room_defaults")
        if found is None:
            return None, None
        value, chk, line = found
        data = chk.mapping(value, line, "'room_defaults'")
        if data is None:
            return None, None
        chk.keys(data, ("room", "direct"), "'room_defaults'")
        out = []
        for key in ("room", "direct"):
            class_id = chk.text(data, key, "'room_defaults'", required=False)
            if class_id is not None and class_id not in classes:
                chk.error(data.line_of(key), f"'room_defaults.{key}' names unknown room class '{class_id}'; known: {', '.join(sorted(classes)) or 'none'}")
                class_id = None
            out.append(class_id)
        return out[0], out[1]

    def _standard_rooms(self, classes: dict[str, RoomClass], units: dict[str, Unit]) -> list[StandardRoom]:
        rooms: list[StandardRoom] = []
        found = self.list_section("standard_rooms", "rooms")
        if found is None:
            return rooms
        value, chk = found
        aliases: dict[str, int] = {}
        fields = ("unit", "unit_name", "hospital")
        for i, item in enumerate(value):
            data = chk.mapping(item, value.line_of(i), "a standard room")
            if data is None:
                continue
            chk.keys(data, ("id", "class", "units", "name", "alias", "topic"), "a standard room")
            room_id = chk.text(data, "id", "a standard room")
            what = f"standard room '{room_id}'"
            class_id = chk.text(data, "class", what)
            name = chk.text(data, "name", what) or "{unit_name}"
            alias = chk.text(data, "alias", what, required=False) or f"{{unit}}-{room_id}"
            topic = chk.text(data, "topic", what, required=False) or ""
            if room_id is None or class_id is None:
                continue
            if class_id not in classes:
                chk.error(data.line_of("class"), f"{what} names unknown room class '{class_id}'; known: {', '.join(sorted(classes)) or 'none'}")
            raw_units = data.get("units", "all")
            unit_ids: tuple[str, ...] | None = None
            if raw_units != "all":
                listed = chk.text_list(data, "units", what)
                for unit_id, uline in listed:
                    if unit_id not in units:
                        chk.error(uline, f"{what} names unknown unit '{unit_id}'")
                unit_ids = tuple(u for u, _ in listed)
            templates_ok = all(
                self._check_template(chk, data.line_of(key), text, fields, f"'{key}' of {what}")
                for key, text in (("name", name), ("alias", alias), ("topic", topic))
            )
            if not templates_ok:
                continue
            for unit_id in unit_ids if unit_ids is not None else tuple(units):
                if unit_id not in units:
                    continue
                made = alias.format(unit=unit_id, unit_name=units[unit_id].name, hospital="")
                aline = data.line_of("alias")
                if not ALIAS_RE.match(made):
                    chk.error(aline, f"{what}: alias '{made}' may only use lowercase letters, digits and . _ = -")
                elif made in aliases:
                    chk.error(aline, f"{what}: alias '#{made}' is also produced at line {aliases[made]}; add {{unit}} to the alias")
                    break
                else:
                    aliases[made] = aline
            rooms.append(StandardRoom(room_id, class_id, unit_ids, name, alias, topic))
        return rooms


def _read_dir(directory: Path) -> tuple[list[tuple[str, str]], list[PolicyError]]:
    errors: list[PolicyError] = []
    if not directory.is_dir():
        return [], [PolicyError(str(directory), 0, "policy directory does not exist")]
    files = []
    try:
        paths = policy_files(directory)
    except OSError as exc:
        return [], [PolicyError(str(directory), 0, f"cannot list policy directory: {exc.strerror}")]
    if not paths:
        errors.append(PolicyError(str(directory), 0, "no policy files (*.yaml) in this directory"))
    for path in paths:
        try:
            files.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(PolicyError(str(path), 0, f"cannot read file: {exc}"))
    return files, errors


def load_policy(directory: Path | str) -> Policy:
    """Load every ``*.yaml`` file in ``directory`` as one policy, or raise ``PolicyInvalid``."""
    files, errors = _read_dir(Path(directory))
    if errors:
        raise PolicyInvalid(errors)
    return load_policy_texts(files)


def load_policy_texts(files: list[tuple[str, str]]) -> Policy:
    """Same as ``load_policy`` over (name, text) pairs; the pure core used by unit tests."""
    digest = hashlib.sha256()
    builder = _Builder()
    for name, text in files:
        digest.update(Path(name).name.encode() + b"\0" + text.encode() + b"\0")
        builder.add_file(name, text)
    return builder.build(digest.hexdigest(), files[0][0] if files else "policies")


def validate_policy_dir(directory: Path | str) -> list[PolicyError]:
    try:
        load_policy(directory)
    except PolicyInvalid as exc:
        return exc.errors
    return []
