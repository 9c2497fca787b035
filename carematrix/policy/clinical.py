"""The ``clinical:`` policy section: which hospital systems may send, how their ward codes map
onto units and on-duty roles, and where each kind of clinical event goes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from carematrix.policy.checker import Checker, Sections, kind_of
from carematrix.policy.oncall import OncallPolicy
from carematrix.policy.org import Org, Unit
from carematrix.policy.yamlsrc import LineDict, LineList

SECTIONS = ("clinical",)

EVENTS = (
    "admission", "transfer", "discharge", "update", "result", "critical_result", "order",
    "report", "imaging",
)
PRIORITIES = ("routine", "urgent", "critical")
# When an alert that paged several roles counts as acknowledged for the sending system.
ACK_CONDITIONS = ("all", "any")
# Who a rule can notify by direct message besides the ward room and the ward's roles.
NOTIFY_TARGETS = ("ordering_provider",)
# FHIR resource types a source may be allowed to push (bridges.fhir.validate.RESOURCE_TYPES).
FHIR_TYPES = ("Encounter", "Observation", "DiagnosticReport", "ImagingStudy", "ServiceRequest", "Patient")
SOURCE_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
DEEP_LINK_FIELDS = {"patient": ("patient_id",), "study": ("study_uid", "accession", "patient_id")}


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
    notify: tuple[str, ...] = ()  # NOTIFY_TARGETS told by direct message
    acknowledged_when: str = "all"  # ACK_CONDITIONS: every role paged, or any one of them


@dataclass(frozen=True)
class CasePolicy:
    """Patient case (MDT) rooms: who may open one and how it is named."""

    open_positions: frozenset[str] = frozenset({"doctor"})
    room_name: str = "Case {patient_name} ({patient_id})"
    key_images: int = 4  # images posted per study by !images
    # HIS order codes that open a case room by themselves -> the units whose on-duty roles
    # are brought in (a consult order for the ICU, say).
    consult_orders: dict[str, tuple[str, ...]] | None = None


@dataclass(frozen=True)
class ClinicalPolicy:
    senders: frozenset[str]  # MSH-4 sending facilities accepted
    wards: dict[str, Ward]
    rules: tuple[Rule, ...]
    ward_room: str = "{unit}-team"  # alias localpart of a unit's room for clinical notices
    deep_links: dict[str, str] | None = None  # "patient"/"study" -> URL template
    # FHIR sources (named by their bearer token in the deployment's secrets) -> the resource
    # types each may push.
    fhir_sources: dict[str, frozenset[str]] | None = None
    cases: CasePolicy = CasePolicy()
    # Sending source (MSH-4 / FHIR source name, or "*") -> the on-call role paged for a
    # critical result nobody else can be found for.
    safety_net: dict[str, str] | None = None
    ordering_doctor_minutes: int = 5  # the ordering doctor's turn before the safety net
    integration_room: str | None = None  # alias localpart told about anything undeliverable

    def safety_net_for(self, source: str) -> str | None:
        net = self.safety_net or {}
        return net.get(source) or net.get("*")

    def link(self, kind: str, **values: str) -> str | None:
        """A deep link into the HIS/EMR/PACS viewer, or None when the hospital has none."""
        template = (self.deep_links or {}).get(kind)
        if not template:
            return None
        return template.format(**{k: quote(v, safe="") for k, v in values.items()})

    def rules_for(self, event: str) -> list[Rule]:
        return [r for r in self.rules if r.event == event]


def parse_clinical(sections: Sections, org: Org, oncall: OncallPolicy | None) -> ClinicalPolicy | None:
    """The ``clinical:`` section checked against the units and the on-call role addresses, or
    None if the hospital has none (or it is not a mapping, which is reported)."""
    found = sections.mapping_section("clinical")
    if found is None:
        return None
    data, chk = found
    units = org.units
    oncall_roles = set(oncall.roles) if oncall else set()
    chk.keys(
        data,
        ("senders", "wards", "rules", "ward_room", "deep_links", "fhir_sources", "cases", "safety_net",
         "ordering_doctor_minutes", "integration_room"),
        "'clinical'",
    )
    senders = frozenset(v for v, _ in chk.text_list(data, "senders", "'clinical'"))
    if not senders:
        chk.error(data.line, "'clinical' needs 'senders': the sending facilities (MSH-4) accepted")
    wards: dict[str, Ward] = {}
    ward_specs = chk.entries(data.get("wards"), data.line_of("wards"), "'clinical.wards'") if "wards" in data else []
    for code, ward, wline in ward_specs:
        what = f"ward '{code}'"
        body = chk.mapping(ward, wline, what)
        if body is None:
            continue
        chk.keys(body, ("unit", "roles"), what)
        unit = chk.text(body, "unit", what) or ""
        if unit and unit not in units:
            chk.error(body.line_of("unit"), f"{what} names unknown unit '{unit}'")
        roles: dict[str, str] = {}
        rmap = chk.entries(body.get("roles"), body.line_of("roles"), f"'roles' of {what}") if "roles" in body else []
        for key, role_id, rline in rmap:
            if isinstance(role_id, LineDict | LineList):
                chk.error(rline, f"'roles.{key}' of {what} must name an on-call role, got {kind_of(role_id)}")
            elif role_id not in oncall_roles:
                chk.error(rline, f"'roles.{key}' of {what} names unknown on-call role '{role_id}'")
            roles[str(key)] = str(role_id)
        wards[str(code)] = Ward(str(code), unit, roles)
    rules: list[Rule] = []
    items = data.get("rules")
    if not isinstance(items, LineList):
        chk.error(data.line_of("rules") if "rules" in data else data.line, "'clinical.rules' must be a list of rules")
        items = LineList()
    for body in chk.items(items, "a clinical rule"):
        # "when", not "on": YAML reads a bare "on" as true.
        chk.keys(body, ("when", "post", "page", "priority", "notify", "acknowledged_when"), "a clinical rule")
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
        priority = chk.choice(body, "priority", PRIORITIES, "'priority' of a clinical rule", "routine", "critical")
        notify = [n for n, _ in chk.text_list(body, "notify", "a clinical rule")]
        for target in notify:
            if target not in NOTIFY_TARGETS:
                chk.error(body.line_of("notify"), f"'notify' names '{target}' (known: {', '.join(NOTIFY_TARGETS)})")
        acked_when = chk.choice(body, "acknowledged_when", ACK_CONDITIONS, "'acknowledged_when' of a clinical rule", "all", "all")
        rules.append(Rule(str(event), post, tuple(page), priority, tuple(notify), acked_when))
    ward_room = str(data.get("ward_room", "{unit}-team"))
    links = None
    if "deep_links" in data:
        links = {}
        for kind, template, lline in chk.entries(data["deep_links"], data.line_of("deep_links"), "'clinical.deep_links'"):
            fields = DEEP_LINK_FIELDS.get(str(kind))
            if fields is None:
                chk.error(lline, f"deep link '{kind}' is not known (known: {', '.join(DEEP_LINK_FIELDS)})")
                continue
            try:
                str(template).format(**{f: "x" for f in fields})
            except (KeyError, IndexError, ValueError) as exc:
                chk.error(lline, f"deep link '{kind}' uses an unknown field or bad braces ({exc}); fields: {', '.join('{' + f + '}' for f in fields)}")
                continue
            links[str(kind)] = str(template)
    sources = _fhir_sources(data, chk) if "fhir_sources" in data else None
    cases = _cases(data, chk, units) if "cases" in data else CasePolicy()
    net = _safety_net(data, chk, oncall_roles, senders | frozenset(sources or {}), rules)
    minutes = data.get("ordering_doctor_minutes", ClinicalPolicy.ordering_doctor_minutes)
    if not isinstance(minutes, int) or isinstance(minutes, bool) or not 1 <= minutes <= 60:
        chk.error(data.line_of("ordering_doctor_minutes"), "'ordering_doctor_minutes' must be a whole number from 1 to 60")
        minutes = ClinicalPolicy.ordering_doctor_minutes
    room = data.get("integration_room")
    if room is not None and not (isinstance(room, str) and re.match(r"^[a-z0-9][a-z0-9._=-]{0,100}$", room)):
        chk.error(data.line_of("integration_room"), "'integration_room' must be a room alias localpart such as clinical-integration")
        room = None
    if net and room is None:
        chk.error(data.line_of("safety_net"), "critical routing needs 'integration_room': where results nobody could be paged for are reported")
    return ClinicalPolicy(senders, wards, tuple(rules), ward_room, links, sources, cases, net or None, minutes, room)


def _safety_net(data: LineDict, chk: Checker, oncall_roles: set[str], sources: frozenset[str], rules: list[Rule]) -> dict[str, str]:
    """A result the policy pages for must reach a human even when no ward is known: every
    sending source needs a safety-net role (its own or the "*" default)."""
    out: dict[str, str] = {}
    if "safety_net" in data:
        for source, role, line in chk.entries(data["safety_net"], data.line_of("safety_net"), "'clinical.safety_net'"):
            if isinstance(role, LineDict | LineList):
                chk.error(line, f"safety net for '{source}' must name an on-call role, got {kind_of(role)}")
                continue
            if role not in oncall_roles:
                chk.error(line, f"safety net for '{source}' names unknown on-call role '{role}'")
                continue
            out[str(source)] = str(role)
    paging = [r for r in rules if r.page]
    if paging:
        missing = sorted(s for s in sources if s not in out and "*" not in out)
        if missing:
            line = data.line_of("safety_net") if "safety_net" in data else data.line
            kinds = ", ".join(sorted({r.event for r in paging}))
            chk.error(line, f"'clinical' pages for {kinds} but has no 'safety_net' role for {', '.join(missing)}: a result for a patient with no known ward would reach nobody")
    return out


def _fhir_sources(data: LineDict, chk: Checker) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for name, types, line in chk.entries(data["fhir_sources"], data.line_of("fhir_sources"), "'clinical.fhir_sources'"):
        if not re.match(SOURCE_RE, str(name)):
            chk.error(line, f"FHIR source name '{name}' must be letters, digits, '.', '_' or '-'")
            continue
        if not isinstance(types, list) or not types:
            chk.error(line, f"FHIR source '{name}' needs the list of resource types it may push")
            continue
        bad = [str(t) for t in types if t not in FHIR_TYPES]
        if bad:
            chk.error(line, f"FHIR source '{name}' lists unsupported resource types {', '.join(bad)} (supported: {', '.join(FHIR_TYPES)})")
        out[str(name)] = frozenset(str(t) for t in types if t in FHIR_TYPES)
    return out


def _cases(data: LineDict, chk: Checker, units: dict[str, Unit]) -> CasePolicy:
    body = chk.mapping(data["cases"], data.line_of("cases"), "'clinical.cases'")
    if body is None:
        return CasePolicy()
    chk.keys(body, ("open", "room_name", "key_images", "consult_orders"), "'clinical.cases'")
    consults: dict[str, tuple[str, ...]] = {}
    if "consult_orders" in body:
        orders = chk.entries(body["consult_orders"], body.line_of("consult_orders"), "'clinical.cases.consult_orders'")
        for code, targets, line in orders:
            if not isinstance(targets, list) or not targets:
                chk.error(line, f"consult order '{code}' needs the list of units to bring in")
                continue
            shaped = [u for u in targets if isinstance(u, LineDict | LineList)]
            if shaped:
                chk.error(line, f"consult order '{code}' must list unit IDs, got {kind_of(shaped[0])}")
                continue
            unknown = [str(u) for u in targets if u not in units]
            if unknown:
                chk.error(line, f"consult order '{code}' names unknown unit(s) {', '.join(unknown)}")
            consults[str(code)] = tuple(str(u) for u in targets if u in units)
    positions = frozenset(p for p, _ in chk.text_list(body, "open", "'clinical.cases'")) or CasePolicy.open_positions
    name = str(body.get("room_name", CasePolicy.room_name))
    try:
        name.format(patient_name="x", patient_id="x")
    except (KeyError, IndexError, ValueError) as exc:
        chk.error(body.line_of("room_name"), f"'room_name' may use {{patient_name}} and {{patient_id}} only ({exc})")
        name = CasePolicy.room_name
    images = body.get("key_images", CasePolicy.key_images)
    if not isinstance(images, int) or isinstance(images, bool) or not 1 <= images <= 20:
        chk.error(body.line_of("key_images"), "'key_images' must be a whole number from 1 to 20")
        images = CasePolicy.key_images
    return CasePolicy(positions, name, images, consults or None)


