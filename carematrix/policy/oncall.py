"""The on-call part of the hospital policy (``oncall:`` in policies/*.yaml): role addresses,
their escalation chains, fallback pools, roster feeds and quiet hours.

Checked with lines like every other section: a typo in an escalation target or a roster
mapping fails at load, not at 03:00 when the step fires."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from carematrix.identity import ROLE_PREFIX
from carematrix.oncall.escalation import PRIORITIES, EscalationPolicy, Step
from carematrix.oncall.targets import parse_target
from carematrix.policy.checker import Checker, Sections, kind_of
from carematrix.policy.org import Org, Unit
from carematrix.policy.yamlsrc import LineDict, LineList

SECTIONS = ("oncall",)

ROLE_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,40}/[a-z][a-z0-9-]{0,40}$")
FEED_KINDS = ("ical", "csv", "fhir")
QUIET_MODES = ("opt_in", "everyone", "off")
HANDOVER_MODES = ("release", "stay")
# In the order error messages list them.
ACK_METHODS = ("reply", "reaction", "read")


def role_localpart(role_id: str) -> str:
    """``cardiology/attending`` → ``role-cardiology-attending`` (user and alias localpart)."""
    return ROLE_PREFIX + role_id.replace("/", "-")


@dataclass(frozen=True)
class RoleAddress:
    id: str
    unit: str
    name: str  # display name of the role account, e.g. "心内科 · 主班医生 (值班)"
    escalation: EscalationPolicy
    handover: str = "release"

    @property
    def localpart(self) -> str:
        return role_localpart(self.id)


@dataclass(frozen=True)
class FeedSpec:
    id: str
    kind: str
    path: str | None  # relative to the policy directory
    url: str | None
    refresh_seconds: int
    roles: dict[str, str]  # feed label -> role ID
    staff: dict[str, str] | None  # feed person id -> staff number
    columns: dict[str, str] = field(default_factory=dict)  # CSV only
    role_from: str = "summary"  # iCal only
    encoding: str = "utf-8"


@dataclass(frozen=True)
class OncallPolicy:
    timezone: str
    roles: dict[str, RoleAddress]
    pools: dict[str, tuple[str, ...]]
    feeds: tuple[FeedSpec, ...]
    quiet_hours: str = "opt_in"
    overrides_by: frozenset[str] = frozenset()  # staff roles allowed to swap / cover
    admin_room: str | None = None  # alias localpart told about feed problems

    def role_for_localpart(self, localpart: str) -> RoleAddress | None:
        for role in self.roles.values():
            if role.localpart == localpart:
                return role
        return None


def parse_oncall(sections: Sections, org: Org) -> OncallPolicy | None:
    """The ``oncall:`` section checked against the organisation, or None if the hospital has
    none (or it is not a mapping, which is reported)."""
    found = sections.mapping_section("oncall")
    if found is None:
        return None
    data, chk = found
    staff = org.staff_numbers
    chk.keys(
        data,
        ("timezone", "roles", "pools", "feeds", "quiet_hours", "overrides_by", "admin_room"),
        "'oncall'",
    )
    timezone = chk.text(data, "timezone", "'oncall'") or "UTC"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        chk.error(data.line_of("timezone"), f"'oncall.timezone' '{timezone}' is not an IANA time zone (e.g. Asia/Shanghai)")
    pools = _pools(chk, data, staff)
    roles = _roles(chk, data, org.units, staff, pools)
    feeds = _feeds(chk, data, roles, staff)
    quiet = chk.choice(data, "quiet_hours", QUIET_MODES, "'oncall.quiet_hours'", "opt_in", "opt_in")
    overrides_by = []
    for role, rline in chk.text_list(data, "overrides_by", "'oncall'"):
        if role not in org.roles:
            chk.error(rline, f"'oncall.overrides_by' names unknown staff role '{role}'")
        overrides_by.append(role)
    admin_room = chk.text(data, "admin_room", "'oncall'", required=False)
    return OncallPolicy(
        timezone=timezone, roles=roles, pools=pools, feeds=tuple(feeds), quiet_hours=quiet,
        overrides_by=frozenset(overrides_by), admin_room=admin_room,
    )


def _pools(chk: Checker, data: LineDict, staff: set[str]) -> dict[str, tuple[str, ...]]:
    pools: dict[str, tuple[str, ...]] = {}
    if "pools" not in data:
        return pools
    for name, members, line in chk.entries(data["pools"], data.line_of("pools"), "'oncall.pools'"):
        holder = LineDict({name: members})
        holder.key_lines = {name: line}
        holder.line = line
        numbers = []
        for number, nline in chk.text_list(holder, name, f"pool '{name}'"):
            if number not in staff:
                chk.error(nline, f"pool '{name}' names unknown staff number '{number}'")
            numbers.append(number)
        pools[name] = tuple(numbers)
    return pools


def _target(
    chk: Checker, line: int, target: Any, what: str, roles: set[str], staff: set[str], pools: dict[str, tuple[str, ...]]
) -> str | None:
    """``target`` if it is a valid escalation target naming known roles, staff and pools;
    None (after reporting) if not."""
    if not isinstance(target, str):
        chk.error(line, f"{what} must be text like oncall, role:<role>, staff:<number> or pool:<name>")
        return None
    try:
        kind, arg = parse_target(target)
    except ValueError as exc:
        chk.error(line, f"{what}: {exc}")
        return None
    if kind in ("role", "backup") and arg not in roles:
        chk.error(line, f"{what} names unknown role address '{arg}'")
        return None
    if kind == "staff" and arg not in staff:
        chk.error(line, f"{what} names unknown staff number '{arg}'")
        return None
    if kind == "pool" and arg not in pools:
        chk.error(line, f"{what} names unknown pool '{arg}'")
        return None
    return target


def _roles(
    chk: Checker, data: LineDict, units: dict[str, Unit], staff: set[str], pools: dict[str, tuple[str, ...]]
) -> dict[str, RoleAddress]:
    roles: dict[str, RoleAddress] = {}
    spec = chk.mapping(data.get("roles"), data.line_of("roles"), "'oncall.roles'") if "roles" in data else None
    if spec is None:
        return roles
    role_ids = set(spec)
    for role_id, body in spec.items():
        rline = spec.line_of(role_id)
        what = f"role address '{role_id}'"
        if not ROLE_ID_RE.match(role_id):
            chk.error(rline, f"role address id '{role_id}' must look like unit/role (lowercase, e.g. cardiology/attending)")
            continue
        body = chk.mapping(body, rline, what)
        if body is None:
            continue
        chk.keys(body, ("unit", "name", "ack_by", "escalation", "fallback", "handover"), what)
        unit = chk.text(body, "unit", what) or ""
        if unit and unit not in units:
            chk.error(body.line_of("unit"), f"{what} names unknown unit '{unit}'")
        name = chk.text(body, "name", what) or role_id
        ack = []
        for method, mline in chk.text_list(body, "ack_by", what):
            if method not in ACK_METHODS:
                chk.error(mline, f"'ack_by' of {what}: '{method}' is not one of {', '.join(ACK_METHODS)}")
            else:
                ack.append(method)
        steps = []
        chain = body.get("escalation")
        if not isinstance(chain, LineList) or not chain:
            chk.error(body.line_of("escalation") if "escalation" in body else body.line, f"{what} needs an 'escalation' list of steps")
        else:
            for i, item in enumerate(chain):
                sline = chain.line_of(i)
                step = chk.mapping(item, sline, f"step {i + 1} of {what}")
                if step is None:
                    continue
                chk.keys(step, ("to", "timeout", "priority"), f"step {i + 1} of {what}")
                target = _target(chk, step.line_of("to"), step.get("to"), f"'to' of step {i + 1} of {what}", role_ids, staff, pools)
                timeout = chk.duration(step, "timeout", f"step {i + 1} of {what}", minimum=1) if "timeout" in step else None
                if "timeout" not in step:
                    chk.error(sline, f"step {i + 1} of {what} needs a 'timeout' (e.g. 5m)")
                priority = chk.choice(step, "priority", PRIORITIES, f"'priority' of step {i + 1} of {what}", "urgent", "critical")
                if target and timeout:
                    steps.append(Step(target, timeout, priority))
        fallback = body.get("fallback")
        if fallback is not None:
            fallback = _target(chk, body.line_of("fallback"), fallback, f"'fallback' of {what}", role_ids, staff, pools)
        handover = chk.choice(body, "handover", HANDOVER_MODES, f"'handover' of {what}", "release", "release")
        if steps:
            roles[role_id] = RoleAddress(
                id=role_id, unit=unit, name=name, handover=handover,
                escalation=EscalationPolicy(tuple(steps), fallback, frozenset(ack or ("reply", "reaction"))),
            )
    return roles


def _feeds(chk: Checker, data: LineDict, roles: dict[str, RoleAddress], staff: set[str]) -> list[FeedSpec]:
    feeds: list[FeedSpec] = []
    if "feeds" not in data:
        return feeds
    items = data["feeds"]
    if not isinstance(items, LineList):
        chk.error(data.line_of("feeds"), "'oncall.feeds' must be a list of feeds")
        return feeds
    seen: set[str] = set()
    for i, item in enumerate(items):
        spec = chk.mapping(item, items.line_of(i), "a roster feed")
        if spec is None:
            continue
        chk.keys(spec, ("id", "kind", "path", "url", "refresh", "roles", "staff", "columns", "role_from", "encoding"), "a roster feed")
        feed_id = chk.text(spec, "id", "a roster feed") or f"feed{i + 1}"
        what = f"roster feed '{feed_id}'"
        if feed_id in seen:
            chk.error(spec.line_of("id"), f"{what} is defined twice")
        seen.add(feed_id)
        kind = spec.get("kind")
        if kind not in FEED_KINDS:
            chk.error(spec.line_of("kind"), f"'kind' of {what} must be one of: {', '.join(FEED_KINDS)}")
        path = chk.text(spec, "path", what, required=False)
        url = chk.text(spec, "url", what, required=False)
        if (path is None) == (url is None):
            chk.error(spec.line, f"{what} needs exactly one of 'path' (a file next to the policy) or 'url'")
        if url is not None and not url.startswith(("http://", "https://")):
            chk.error(spec.line_of("url"), f"'url' of {what} must be an http(s) URL")
        refresh = chk.duration(spec, "refresh", what, minimum=5) if "refresh" in spec else 300
        mapping: dict[str, str] = {}
        rmap = chk.mapping(spec.get("roles"), spec.line_of("roles"), f"'roles' of {what}") if "roles" in spec else None
        if rmap is None:
            chk.error(spec.line, f"{what} needs 'roles': the feed's labels mapped to role addresses")
        else:
            for label, role_id in rmap.items():
                if isinstance(role_id, LineDict | LineList):
                    chk.error(rmap.line_of(label), f"'roles' of {what}: '{label}' must map to a role address, got {kind_of(role_id)}")
                elif role_id not in roles:
                    chk.error(rmap.line_of(label), f"'roles' of {what}: '{label}' maps to unknown role address '{role_id}'")
                mapping[str(label)] = str(role_id)
        staff_map = None
        if spec.get("staff") is not None:
            staff_map = {}
            for ident, number, line in chk.entries(spec["staff"], spec.line_of("staff"), f"'staff' of {what}"):
                if str(number) not in staff:
                    chk.error(line, f"'staff' of {what}: '{ident}' maps to unknown staff number '{number}'")
                staff_map[str(ident)] = str(number)
        columns = {}
        if "columns" in spec:
            cmap = chk.mapping(spec["columns"], spec.line_of("columns"), f"'columns' of {what}")
            columns = {str(k): str(v) for k, v in (cmap or {}).items()}
        feeds.append(
            FeedSpec(
                id=feed_id, kind=str(kind), path=path, url=url, refresh_seconds=refresh or 300,
                roles=mapping, staff=staff_map, columns=columns,
                role_from=str(spec.get("role_from", "summary")), encoding=str(spec.get("encoding", "utf-8")),
            )
        )
    return feeds
