"""The ``clinical:`` policy section: which hospital systems may send, how their ward codes map
onto units and on-duty roles, and where each kind of clinical event goes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from carematrix.policy.yamlsrc import LineList

EVENTS = ("admission", "transfer", "discharge", "update", "result", "critical_result", "order")
PRIORITIES = ("routine", "urgent", "critical")


@dataclass(frozen=True)
class Ward:
    code: str  # the HIS point-of-care code (PV1-3.1)
    unit: str
    roles: dict[str, str]  # "nurse" / "doctor" -> role address ID


@dataclass(frozen=True)
class Rule:
    event: str
    post: bool  # a notice in the ward's team room
    page: tuple[str, ...]  # ward role keys ("nurse", "doctor") to page
    priority: str


@dataclass(frozen=True)
class ClinicalPolicy:
    senders: frozenset[str]  # MSH-4 sending facilities accepted
    wards: dict[str, Ward]
    rules: tuple[Rule, ...]
    ward_room: str = "{unit}-team"  # alias localpart of a unit's room for clinical notices
    deep_links: dict[str, str] | None = None  # "patient"/"study" -> URL template

    def rules_for(self, event: str) -> list[Rule]:
        return [r for r in self.rules if r.event == event]


def load_clinical(value: Any, chk: Any, line: int, units: dict, oncall_roles: set[str]) -> ClinicalPolicy | None:
    data = chk.mapping(value, line, "'clinical'")
    if data is None:
        return None
    chk.keys(data, ("senders", "wards", "rules", "ward_room", "deep_links"), "'clinical'")
    senders = frozenset(v for v, _ in chk.text_list(data, "senders", "'clinical'"))
    if not senders:
        chk.error(data.line, "'clinical' needs 'senders': the sending facilities (MSH-4) accepted")
    wards: dict[str, Ward] = {}
    spec = chk.mapping(data.get("wards"), data.line_of("wards"), "'clinical.wards'") if "wards" in data else None
    for code, body in (spec or {}).items():
        what = f"ward '{code}'"
        body = chk.mapping(body, spec.line_of(code), what)
        if body is None:
            continue
        chk.keys(body, ("unit", "roles"), what)
        unit = chk.text(body, "unit", what) or ""
        if unit and unit not in units:
            chk.error(body.line_of("unit"), f"{what} names unknown unit '{unit}'")
        roles: dict[str, str] = {}
        rmap = chk.mapping(body.get("roles"), body.line_of("roles"), f"'roles' of {what}") if "roles" in body else None
        for key, role_id in (rmap or {}).items():
            if role_id not in oncall_roles:
                chk.error(rmap.line_of(key), f"'roles.{key}' of {what} names unknown on-call role '{role_id}'")
            roles[str(key)] = str(role_id)
        wards[str(code)] = Ward(str(code), unit, roles)
    rules: list[Rule] = []
    items = data.get("rules")
    if not isinstance(items, LineList):
        chk.error(data.line_of("rules") if "rules" in data else data.line, "'clinical.rules' must be a list of rules")
        items = LineList()
    for i, item in enumerate(items):
        body = chk.mapping(item, items.line_of(i), "a clinical rule")
        if body is None:
            continue
        # "when", not "on": YAML reads a bare "on" as true.
        chk.keys(body, ("when", "post", "page", "priority"), "a clinical rule")
        event = body.get("when")
        if event not in EVENTS:
            chk.error(body.line_of("when"), f"'when' of a clinical rule must be one of: {', '.join(EVENTS)}")
            continue
        post = body.get("post", True)
        if not isinstance(post, bool):
            chk.error(body.line_of("post"), "'post' of a clinical rule must be true or false")
            post = True
        page = [p for p, _ in chk.text_list(body, "page", "a clinical rule")]
        known = {k for w in wards.values() for k in w.roles}
        for key in page:
            if key not in known:
                chk.error(body.line_of("page"), f"'page' names '{key}', which no ward maps to a role (known: {', '.join(sorted(known)) or 'none'})")
        priority = body.get("priority", "routine")
        if priority not in PRIORITIES:
            chk.error(body.line_of("priority"), f"'priority' of a clinical rule must be one of: {', '.join(PRIORITIES)}")
            priority = "critical"
        rules.append(Rule(str(event), post, tuple(page), str(priority)))
    ward_room = str(data.get("ward_room", "{unit}-team"))
    links = None
    if "deep_links" in data:
        lmap = chk.mapping(data["deep_links"], data.line_of("deep_links"), "'clinical.deep_links'")
        links = {str(k): str(v) for k, v in (lmap or {}).items()}
    return ClinicalPolicy(senders, wards, tuple(rules), ward_room, links)


