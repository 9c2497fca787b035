"""The ``devices:`` policy section: nurse-call buttons, smart badges and bedside terminals that
call the ward's on-duty staff through ``POST /_carematrix/devices/<id>/call``.

Each device has an ID, a location (unit and bed) and a token. The policy holds no token a
reader could use: either the SHA-256 of one (``token_sha256``, made by ``carematrix device
token <id>``) or ``token: generated``, which has ``carematrix up`` generate one into the data
dir's secrets (``device_token:<id>``), like the FHIR sources' tokens. What each kind of press
(``assist``, ``emergency``, ``code``) pages is said once for all devices: the ward role keys of
the device's unit (``nurse``, ``doctor``, as the ``clinical.wards`` of that unit map them) and
any further on-call roles (a resuscitation team), with a priority.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from carematrix.oncall.escalation import PRIORITIES
from carematrix.policy.checker import Checker, Sections
from carematrix.policy.clinical import ClinicalPolicy
from carematrix.policy.oncall import OncallPolicy
from carematrix.policy.org import Org
from carematrix.policy.yamlsrc import LineDict

SECTIONS = ("devices",)

CALL_KINDS = ("assist", "emergency", "code")
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
GENERATED = "generated"
DEFAULT_REPEAT_WINDOW = 60
# What a press pages when the policy does not say: the ward's nurse, then for an emergency or
# a code the doctor too, at critical priority.
DEFAULT_CALLS = {
    "assist": (("nurse",), (), "urgent"),
    "emergency": (("nurse", "doctor"), (), "critical"),
    "code": (("nurse", "doctor"), (), "critical"),
}


@dataclass(frozen=True)
class CallKind:
    kind: str
    page: tuple[str, ...]  # ward role keys of the device's unit ("nurse", "doctor")
    also: tuple[str, ...]  # further on-call role IDs
    priority: str


@dataclass(frozen=True)
class Device:
    id: str
    unit: str
    bed: str | None
    label: str  # what the page says: "ICU bed 03"
    token_sha256: str | None  # None: the token is generated into the deployment's secrets

    @property
    def generated_token(self) -> bool:
        return self.token_sha256 is None


@dataclass(frozen=True)
class DevicePolicy:
    devices: dict[str, Device]
    calls: dict[str, CallKind]
    # Presses of one device within this many seconds of its last are one call.
    repeat_window_seconds: int
    # Unit -> ward role key -> on-call role ID (from clinical.wards), for each device's unit.
    unit_roles: dict[str, dict[str, str]]

    def roles_for(self, device: Device, kind: str) -> tuple[str, ...]:
        """The on-call roles a press of ``kind`` on ``device`` pages, in order, once each."""
        call = self.calls[kind]
        ward = self.unit_roles.get(device.unit, {})
        out: list[str] = []
        for role in [*(ward[k] for k in call.page if k in ward), *call.also]:
            if role not in out:
                out.append(role)
        return tuple(out)


def parse_devices(
    sections: Sections, org: Org, oncall: OncallPolicy | None, clinical: ClinicalPolicy | None
) -> DevicePolicy | None:
    found = sections.mapping_section("devices")
    if found is None:
        return None
    data, chk = found
    chk.keys(data, ("repeat_window", "calls", "devices"), "'devices'")
    window = DEFAULT_REPEAT_WINDOW
    if "repeat_window" in data:
        window = chk.duration(data, "repeat_window", "'devices'") or DEFAULT_REPEAT_WINDOW
    oncall_roles = set(oncall.roles) if oncall else set()
    calls = _calls(data, chk, oncall_roles)
    unit_roles: dict[str, dict[str, str]] = {}
    for each in (clinical.wards.values() if clinical else ()):
        unit_roles.setdefault(each.unit, dict(each.roles))
    devices: dict[str, Device] = {}
    specs = chk.entries(data.get("devices"), data.line_of("devices"), "'devices.devices'") if "devices" in data else []
    if "devices" not in data:
        chk.error(data.line, "'devices' needs 'devices': each device's ID, location and token")
    for device_id, body, line in specs:
        what = f"device '{device_id}'"
        if not DEVICE_ID_RE.match(str(device_id)):
            chk.error(line, f"{what}: an ID is letters, digits, '.', '_' or '-' (at most 64)")
            continue
        spec = chk.mapping(body, line, what)
        if spec is None:
            continue
        device = _device(str(device_id), spec, chk, org)
        if device is None:
            continue
        ward = unit_roles.get(device.unit)
        if ward is None:
            chk.error(spec.line_of("location"), f"{what} is in unit '{device.unit}', which no 'clinical.wards' entry maps to on-duty roles")
            continue
        for call in calls.values():
            missing = [k for k in call.page if k not in ward]
            if missing:
                chk.error(spec.line_of("location"), f"{what}: a '{call.kind}' press pages the unit's {'/'.join(missing)}, "
                          f"but no 'clinical.wards' entry of unit '{device.unit}' maps it to a role")
        devices[device.id] = device
    return DevicePolicy(devices, calls, window, unit_roles)


def _calls(data: LineDict, chk: Checker, oncall_roles: set[str]) -> dict[str, CallKind]:
    calls = {k: CallKind(k, page, also, prio) for k, (page, also, prio) in DEFAULT_CALLS.items()}
    if "calls" not in data:
        return calls
    for kind, body, line in chk.entries(data["calls"], data.line_of("calls"), "'devices.calls'"):
        what = f"call kind '{kind}'"
        if kind not in CALL_KINDS:
            chk.error(line, f"{what} is not known (known: {', '.join(CALL_KINDS)})")
            continue
        spec = chk.mapping(body, line, what)
        if spec is None:
            continue
        chk.keys(spec, ("page", "also", "priority"), what)
        page = tuple(k for k, _ in chk.text_list(spec, "page", what))
        also = []
        for role, rline in chk.text_list(spec, "also", what):
            if role not in oncall_roles:
                chk.error(rline, f"'also' of {what} names unknown on-call role '{role}'")
                continue
            also.append(role)
        if not page and not also:
            chk.error(spec.line, f"{what} pages nobody: give 'page' (ward roles such as nurse) or 'also' (on-call roles)")
        priority = chk.choice(spec, "priority", PRIORITIES, f"'priority' of {what}", DEFAULT_CALLS[str(kind)][2], "critical")
        calls[str(kind)] = CallKind(str(kind), page, tuple(also), priority)
    return calls


def _device(device_id: str, spec: LineDict, chk: Checker, org: Org) -> Device | None:
    what = f"device '{device_id}'"
    chk.keys(spec, ("location", "label", "token", "token_sha256"), what)
    location = chk.mapping(spec.get("location"), spec.line_of("location") if "location" in spec else spec.line, f"'location' of {what}")
    if location is None:
        return None
    chk.keys(location, ("unit", "bed"), f"'location' of {what}")
    unit = chk.text(location, "unit", f"'location' of {what}")
    if unit is None:
        return None
    if unit not in org.units:
        chk.error(location.line_of("unit"), f"{what} names unknown unit '{unit}'")
        return None
    bed = location.get("bed")
    bed_text = str(bed).strip() if isinstance(bed, str | int) and not isinstance(bed, bool) else None
    if "bed" in location and not bed_text:
        chk.error(location.line_of("bed"), f"'bed' of {what} must be text such as \"03\"")
    label = chk.text(spec, "label", what, required=False) or (
        f"{org.units[unit].name} · {bed_text}床 Bed {bed_text}" if bed_text else org.units[unit].name
    )
    digest: str | None = None
    if "token_sha256" in spec and "token" in spec:
        chk.error(spec.line_of("token"), f"{what} has both 'token' and 'token_sha256'; keep one")
        return None
    if "token_sha256" in spec:
        value = str(spec["token_sha256"]).strip().lower()
        if not SHA256_RE.match(value):
            chk.error(spec.line_of("token_sha256"), f"'token_sha256' of {what} must be 64 hex digits (carematrix device token {device_id})")
            return None
        digest = value
    elif spec.get("token") != GENERATED:
        chk.error(
            spec.line_of("token") if "token" in spec else spec.line,
            f"{what} needs 'token_sha256' (from: carematrix device token {device_id}) or 'token: generated' "
            "(made into the deployment's secrets by carematrix up); a plain token does not belong in the policy",
        )
        return None
    return Device(device_id, unit, bed_text, label, digest)
