"""The rooms part of the policy: ``room_classes:``, ``room_defaults:``, ``standard_rooms:`` and
``burn_after_read:`` — what kinds of room exist, who may post in and create them, what protects
their content, and which rooms the org sync keeps for every unit."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from carematrix.policy.checker import Checker, Sections
from carematrix.policy.org import IDENT_RE, Org, Staff, Unit
from carematrix.policy.yamlsrc import LineDict

SECTIONS = ("room_classes", "room_defaults", "standard_rooms", "burn_after_read")

# Room state event that records a room's class; clients can read it, only the bot may change it.
ROOM_CLASS_EVENT = "org.carematrix.room_class"
# Room state event listing the content protections of the room's class, for clients to honour
# (no-screenshot needs the client) and show; the server enforces from the policy, not from it.
PROTECTION_EVENT = "org.carematrix.protection"
# Content flag a client or bot sets on a message to have it burnt after reading.
BURN_FLAG = "org.carematrix.burn_after_read"
# State only the CareMatrix service may set in a classified room.
SERVICE_STATE_EVENTS = (ROOM_CLASS_EVENT, PROTECTION_EVENT, "m.room.retention")

OTHER_FILES = ("audited", "block")
ENCRYPTION_STANCES = ("server", "required", "optional")
JOIN_RULES = ("invite", "knock", "restricted", "public")
HISTORY_VISIBILITIES = ("shared", "invited", "joined", "world_readable")
POWER_LEVEL_KEYS = ("events_default", "state_default", "invite", "kick", "ban", "redact")
# What Matrix assumes when a power-levels event omits a key.
POWER_LEVEL_DEFAULTS = {"events_default": 0, "state_default": 50, "invite": 0, "kick": 50, "ban": 50, "redact": 50}
SCOPES = ("hospital", "unit")
ALIAS_RE = re.compile(r"^[a-z0-9._=-]+$")
STANDARD_ROOM_FIELDS = ("unit", "unit_name", "hospital")


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
            out.append("禁止转发 no forwarding")
        if self.watermark:
            out.append("图片水印 watermarked images")
        if self.no_screenshot:
            out.append("禁止截图 no screenshots")
        if self.burn:
            out.append("阅后即焚 burn after read")
        if self.retention_seconds:
            out.append(f"保留{format_duration_zh(self.retention_seconds)} kept {format_duration(self.retention_seconds)}")
        if self.encryption == "required":
            out.append("端到端加密 end-to-end encrypted")
        return out


def format_duration_zh(seconds: int) -> str:
    for unit, size in (("天", 86400), ("小时", 3600), ("分钟", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}秒"


def format_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


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
class Rooms:
    """Room classes by ID, the classes rooms get by default, the standard rooms, and the burn
    timings for messages flagged burn-after-read in rooms without a burn policy."""

    room_classes: dict[str, RoomClass]
    default_room_class: str | None
    default_direct_class: str | None
    standard_rooms: tuple[StandardRoom, ...]
    burn_defaults: BurnPolicy


def parse_rooms(sections: Sections, org: Org) -> Rooms:
    """Build the rooms part, checked against the organisation; errors go to ``sections.errors``."""
    classes = _room_classes(sections, org.roles, org.staff_numbers)
    default_room, default_direct = _room_defaults(sections, classes)
    return Rooms(
        room_classes=classes,
        default_room_class=default_room,
        default_direct_class=default_direct,
        standard_rooms=tuple(_standard_rooms(sections, classes, org.units)),
        burn_defaults=_burn_defaults(sections),
    )


def _room_classes(sections: Sections, roles: dict[str, str], staff_numbers: set[str]) -> dict[str, RoomClass]:
    classes: dict[str, RoomClass] = {}
    found = sections.mapping_section("room_classes")
    if found is None:
        return classes
    data, chk = found
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
        # Invalid: the narrower scope (fail closed).
        scope = chk.choice(spec_map, "scope", SCOPES, f"'scope' of {what}", "hospital", "unit")
        defaults = RoomClass("x", "", None, None)
        join_rules = _choices(chk, spec_map, "join_rules", what, JOIN_RULES) or defaults.join_rules
        history = _choices(chk, spec_map, "history_visibility", what, HISTORY_VISIBILITIES) or defaults.history_visibility
        classes[class_id] = RoomClass(
            id=class_id,
            description=chk.text(spec_map, "description", what, required=False) or "",
            post=_audience(chk, spec_map, "post", what, roles, staff_numbers),
            create=_audience(chk, spec_map, "create", what, roles, staff_numbers),
            reactions=reactions,
            scope=scope,
            join_rules=join_rules,
            history_visibility=history,
            min_power_levels=_power_floors(chk, spec_map, what),
            max_members=_max_members(chk, spec_map, what),
            protection=_protection(chk, spec_map, what),
        )
    return classes


def _audience(
    chk: Checker, data: LineDict, key: str, what: str, roles: dict[str, str], staff_numbers: set[str]
) -> Audience | None:
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


def _protection(chk: Checker, data: LineDict, what: str) -> Protection:
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
    other_files = chk.choice(spec, "other_files", OTHER_FILES, f"'protection.other_files' of {what}", "audited", "block")
    encryption = chk.choice(spec, "encryption", ENCRYPTION_STANCES, f"'protection.encryption' of {what}", "server", "server")
    if encryption != "server" and (flags["watermark"] or flags["no_forward"]):
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
        burn = _burn_policy(chk, spec, "burn_after_read", f"'protection' of {what}", DEFAULT_BURN)
    retention = None
    if spec.get("retention") not in (None, "keep"):
        retention = chk.duration(spec, "retention", f"'protection' of {what}", minimum=10, unit_required=True)
    return Protection(
        no_forward=flags["no_forward"],
        watermark=flags["watermark"],
        other_files=other_files,
        no_screenshot=flags["no_screenshot"],
        burn=burn,
        retention_seconds=retention,
        encryption=encryption,
    )


def _burn_policy(chk: Checker, data: LineDict, key: str, what: str, default: BurnPolicy) -> BurnPolicy | None:
    value = data[key]
    if value is False or value is None:
        return None
    if value is True:
        return default
    spec = chk.mapping(value, data.line_of(key), f"'{key}' of {what}")
    if spec is None:
        return default
    chk.keys(spec, ("grace", "ttl"), f"'{key}' of {what}")
    grace = chk.duration(spec, "grace", f"'{key}' of {what}", minimum=0) if "grace" in spec else None
    ttl = chk.duration(spec, "ttl", f"'{key}' of {what}") if "ttl" in spec else None
    return BurnPolicy(
        grace_seconds=default.grace_seconds if grace is None else grace,
        ttl_seconds=default.ttl_seconds if ttl is None else ttl,
    )


def _burn_defaults(sections: Sections) -> BurnPolicy:
    section = sections.get("burn_after_read")
    if section is None:
        return DEFAULT_BURN
    # The top-level section is read like the same key inside a room class's protection.
    holder = LineDict({"burn_after_read": section.value})
    holder.key_lines = {"burn_after_read": section.line}
    holder.line = section.line
    return _burn_policy(section.checker, holder, "burn_after_read", "the policy", DEFAULT_BURN) or DEFAULT_BURN


def _choices(chk: Checker, data: LineDict, key: str, what: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = chk.text_list(data, key, what)
    if key in data and not values:
        chk.error(data.line_of(key), f"'{key}' of {what} must list at least one of: {', '.join(allowed)}")
    for value, line in values:
        if value not in allowed:
            chk.error(line, f"'{key}' of {what}: '{value}' is not one of {', '.join(allowed)}")
    return tuple(v for v, _ in values if v in allowed)


def _power_floors(chk: Checker, data: LineDict, what: str) -> tuple[tuple[str, int], ...]:
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


def _max_members(chk: Checker, data: LineDict, what: str) -> int | None:
    value = data.get("max_members")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
        chk.error(data.line_of("max_members"), f"'max_members' of {what} must be a whole number of at least 2")
        return 2
    return value


def _room_defaults(sections: Sections, classes: dict[str, RoomClass]) -> tuple[str | None, str | None]:
    found = sections.mapping_section("room_defaults")
    if found is None:
        return None, None
    data, chk = found
    chk.keys(data, ("room", "direct"), "'room_defaults'")
    out = []
    for key in ("room", "direct"):
        class_id = chk.text(data, key, "'room_defaults'", required=False)
        if class_id is not None and class_id not in classes:
            chk.error(data.line_of(key), f"'room_defaults.{key}' names unknown room class '{class_id}'; known: {', '.join(sorted(classes)) or 'none'}")
            class_id = None
        out.append(class_id)
    return out[0], out[1]


def _standard_rooms(sections: Sections, classes: dict[str, RoomClass], units: dict[str, Unit]) -> list[StandardRoom]:
    rooms: list[StandardRoom] = []
    found = sections.list_section("standard_rooms", "rooms")
    if found is None:
        return rooms
    value, chk = found
    aliases: dict[str, int] = {}
    for data in chk.items(value, "a standard room"):
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
            chk.template(data.line_of(key), text, STANDARD_ROOM_FIELDS, f"'{key}' of {what}")
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
