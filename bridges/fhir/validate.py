"""Pushed bytes to a FHIR resource we can route, or a ``FhirInvalid`` listing every problem.

Validation is complete before anything is stored: the structure against the FHIR R4 (4.0.1)
definitions (fhirclient's generated models in strict mode: wrong JSON types, unknown
elements, malformed dates, missing 1..1 elements), then the elements routing depends on. All
issues are collected, so a sender fixing a mapping sees every broken element at once rather
than one per round trip.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from functools import cache
from typing import Any

from fhirclient.models.diagnosticreport import DiagnosticReport
from fhirclient.models.encounter import Encounter
from fhirclient.models.fhirabstractbase import FHIRAbstractBase, FHIRValidationError
from fhirclient.models.fhirdate import FHIRDate
from fhirclient.models.fhirdatetime import FHIRDateTime
from fhirclient.models.fhirinstant import FHIRInstant
from fhirclient.models.fhirtime import FHIRTime
from fhirclient.models.imagingstudy import ImagingStudy
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirclient.models.servicerequest import ServiceRequest

from bridges.fhir.outcome import (
    BAD_REQUEST,
    FORBIDDEN,
    UNPROCESSABLE,
    FhirInvalid,
    Issue,
)

__all__ = [
    "BUNDLE_TYPES",
    "DICOM_UID_SYSTEM",
    "RESOURCE_TYPES",
    "parse_date",
    "parse_datetime",
    "parse_json",
    "reference_key",
    "reference_parts",
    "validate_bundle_entries",
    "validate_resource",
]

RESOURCE_TYPES = (
    "Encounter", "Observation", "DiagnosticReport", "ImagingStudy", "ServiceRequest", "Patient",
)
BUNDLE_TYPES = ("transaction", "batch", "collection", "message")
# DICOM UIDs as FHIR identifiers: system urn:dicom:uid, value urn:oid:<uid> (ImagingStudy).
DICOM_UID_SYSTEM = "urn:dicom:uid"
_DICOM_UID = re.compile(r"urn:oid:([0-2](?:\.(?:0|[1-9][0-9]*))+)")

_MODELS: dict[str, type[FHIRAbstractBase]] = {
    "Encounter": Encounter,
    "Observation": Observation,
    "DiagnosticReport": DiagnosticReport,
    "ImagingStudy": ImagingStudy,
    "ServiceRequest": ServiceRequest,
    "Patient": Patient,
}
# A literal reference, relative (Patient/P123) or absolute (https://his/fhir/Patient/P123),
# optionally version-specific. urn:uuid:, urn:oid: and #contained references do not match.
_LITERAL_REFERENCE = re.compile(
    r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?\Z"
)
_PARTIAL_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:(Z)|([+-])(\d{2}):(\d{2}))"
)
_MISSING = re.compile(r'Non-optional property "([^"]+)"')
_SUPERFLUOUS = re.compile(r'Superfluous entry "([^"]+)"')
# Why routing needs an element, told to the sender along with its absence.
_ROUTING_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "Observation": (
        ("status", "only final, amended and corrected results are passed on"),
        ("code", "the notice names the test"),
    ),
    "Encounter": (("status", "the status decides admission, transfer or discharge"),),
    "DiagnosticReport": (
        ("status", "only final, amended, corrected and appended reports are passed on"),
        ("code", "the notice names the report"),
    ),
    "ImagingStudy": (("status", "only available studies are passed on"),),
    "ServiceRequest": (
        ("status", "the status decides new order, cancellation or completion"),
        ("intent", "only orders are passed on, not proposals or plans"),
    ),
}
_SUBJECT_REQUIRED = frozenset(_ROUTING_NEEDS)


def parse_json(body: bytes) -> Any:
    """A UTF-8 byte-order mark is tolerated (some Windows interface engines send one); NaN
    and Infinity, which Python's json would accept, are not JSON and are refused."""
    if not body.strip():
        raise _structure("the request body is empty: expected a FHIR resource as JSON")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        line_start = body.rfind(b"\n", 0, exc.start) + 1
        column = len(body[line_start:exc.start].decode("utf-8", errors="replace")) + 1
        raise _structure(
            f"the body is not valid UTF-8 (byte 0x{body[exc.start]:02X} at line {line}, column "
            f"{column}): FHIR JSON must be UTF-8 encoded, not GBK/GB18030"
        ) from exc
    text = text.removeprefix("\ufeff")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _structure(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    except _NotJson as exc:
        raise _structure(str(exc)) from exc
    except RecursionError as exc:
        raise _structure("invalid JSON: nested too deeply") from exc


def validate_resource(data: Any, allowed: frozenset[str] | set[str]) -> dict:
    """The type checks come first and stop at the first failure: content of a type we do
    not take, or that this source may not send, is not inspected at all."""
    resource = _check_type(data, allowed, "")
    found = _content_issues(resource, str(resource["resourceType"]))
    if found:
        raise FhirInvalid([issue for issue, _ in found], _status(found))
    return resource


def validate_bundle_entries(bundle: Any, allowed: frozenset[str] | set[str]) -> list[dict]:
    """Every entry is checked before any is accepted: a batch half-stored on error would be
    delivered again, in part, when the sender retries it whole. The first entry of a message
    Bundle (its MessageHeader) is the envelope, not content, and is skipped."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise _structure("expected a Bundle", "Bundle")
    kind = bundle.get("type")
    if kind not in BUNDLE_TYPES:
        raise FhirInvalid([Issue(
            "error", "not-supported",
            f"Bundle type {kind!r} is not accepted here (accepted: {', '.join(BUNDLE_TYPES)})",
            "Bundle.type",
        )], UNPROCESSABLE)
    entries = bundle.get("entry")
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise _structure("Bundle.entry must be an array", "Bundle.entry")
    found: list[tuple[Issue, int]] = []
    resources = []
    for index, entry in enumerate(entries):
        path = f"Bundle.entry[{index}]"
        if not isinstance(entry, dict):
            found.append((_issue("structure", f"{path} must be an object", path), BAD_REQUEST))
            continue
        resource = entry.get("resource")
        if kind == "message" and index == 0:
            if not isinstance(resource, dict) or resource.get("resourceType") != "MessageHeader":
                found.append((_issue(
                    "structure", "the first entry of a message Bundle must be its MessageHeader",
                    f"{path}.resource",
                ), BAD_REQUEST))
            continue
        if resource is None:
            request = entry.get("request")
            method = request.get("method") if isinstance(request, dict) else None
            if method == "DELETE":
                found.append((_issue(
                    "not-supported", "deleting resources is not supported", f"{path}.request",
                ), UNPROCESSABLE))
            else:
                found.append((_issue(
                    "required", f"{path} carries no resource", f"{path}.resource"), UNPROCESSABLE))
            continue
        try:
            checked = _check_type(resource, allowed, f"{path}.resource")
        except FhirInvalid as exc:
            found.extend((issue, exc.status) for issue in exc.issues)
            continue
        found.extend(_content_issues(checked, f"{path}.resource"))
        resources.append(checked)
    if found:
        raise FhirInvalid([issue for issue, _ in found], _status(found))
    return resources


def reference_key(reference: str) -> str:
    """``Type/id`` for a literal reference, relative or absolute and with or without
    ``_history``, so references can be looked up among the resources a Bundle carries;
    anything else (``urn:uuid:…``, ``#contained``) unchanged."""
    kind, rid = reference_parts(reference)
    return f"{kind}/{rid}" if kind else reference


def reference_parts(reference: str) -> tuple[str, str]:
    """(type, id) of a literal reference, ("", "") for any other."""
    match = _LITERAL_REFERENCE.search(reference)
    return (match.group(1), match.group(2)) if match else ("", "")


def parse_datetime(value: Any, expression: str) -> datetime | None:
    """A FHIR date, dateTime or instant as an aware datetime. Reduced precision (``2025``,
    ``2025-03``, ``2025-03-12``) reads as the start of the period, at midnight UTC; a time of
    day without an offset is refused, as FHIR requires one and guessing the zone would move
    the event by hours. Leap seconds are clamped to :59."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            if match := _PARTIAL_DATE.fullmatch(value):
                year, month, day = match.groups()
                return datetime(int(year), int(month or 1), int(day or 1), tzinfo=UTC)
            if match := _DATETIME.fullmatch(value):
                year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = (
                    match.groups())
                zone = UTC
                if not zulu:
                    offset = timedelta(hours=int(off_h), minutes=int(off_m))
                    if offset > timedelta(hours=14) or int(off_m) > 59:
                        raise ValueError("offset out of range")
                    zone = timezone(-offset if sign == "-" else offset)
                return datetime(
                    int(year), int(month), int(day), int(hour), int(minute),
                    min(int(second), 59), int((fraction or "0")[:6].ljust(6, "0")), tzinfo=zone,
                )
        except ValueError:
            pass
    raise FhirInvalid([_issue(
        "value",
        f"{expression}: {value!r} is not a FHIR date/time (e.g. 2025-03-12T08:30:00+08:00 or "
        "2025-03-12; a time of day needs its timezone offset)",
        expression,
    )], BAD_REQUEST)


def parse_date(value: Any, expression: str) -> date | None:
    """None for year- or month-precision dates (a birth year is all some patients have):
    making up a day would show a wrong birthday on the wristband label."""
    moment = parse_datetime(value, expression)
    if moment is None or not isinstance(value, str) or len(value) < 10:
        return None
    if len(value) > 10:
        raise FhirInvalid([_issue(
            "value", f"{expression}: {value!r} is not a FHIR date (YYYY-MM-DD)", expression,
        )], BAD_REQUEST)
    return moment.date()


# -- the resource type ---------------------------------------------------------------------


def _check_type(data: Any, allowed: frozenset[str] | set[str], path: str) -> dict:
    """``path`` is empty for a resource pushed on its own: the issue is then about the whole
    body, which has no FHIRPath."""
    if not isinstance(data, dict):
        raise _structure(
            f"a FHIR resource must be a JSON object, got {_json_kind(data)}", path)
    kind = data.get("resourceType")
    if not isinstance(kind, str) or not kind:
        raise _structure("the resource has no resourceType", f"{path}.resourceType" if path
                         else "")
    if kind not in RESOURCE_TYPES:
        raise FhirInvalid([Issue(
            "error", "not-supported",
            f"resource type {kind!r} is not accepted (accepted: {', '.join(RESOURCE_TYPES)})",
            path,
        )], UNPROCESSABLE)
    if kind not in allowed:
        raise FhirInvalid([Issue(
            "error", "forbidden",
            f"this source is not allowed to send {kind} resources (allowed: "
            f"{', '.join(sorted(allowed)) or 'none'})",
            path,
        )], FORBIDDEN)
    return data


# -- structure (fhirclient) and routing ------------------------------------------------------


def _content_issues(resource: dict, root: str) -> list[tuple[Issue, int]]:
    kind = str(resource["resourceType"])
    structural = _model_issues(_MODELS[kind], resource, root)
    seen = {issue.expression for issue in structural}
    routing = [issue for issue in _routing_issues(resource, kind, root)
               if issue.expression not in seen]
    return [(issue, BAD_REQUEST) for issue in structural] + [
        (issue, UNPROCESSABLE) for issue in routing]


def _model_issues(model: type[FHIRAbstractBase], resource: dict, root: str) -> list[Issue]:
    try:
        model(resource, strict=True)
    except FHIRValidationError as exc:
        issues: list[Issue] = []
        _walk(exc, model, resource, root, None, issues)
        return issues
    except Exception as exc:  # fhirclient raises bare Exceptions on some odd input
        return [_issue("structure", f"{root} is not a valid FHIR R4 resource: {exc}", root)]
    return []


@dataclass(frozen=True, slots=True)
class _Property:
    json_name: str
    type: Any
    is_list: bool


@cache
def _properties(cls: type[FHIRAbstractBase]) -> dict[str, _Property]:
    """fhirclient's error paths use Python attribute names (``class_fhir``); we report the
    JSON names the sender wrote."""
    return {
        name: _Property(json_name, typ, is_list)
        for name, json_name, typ, is_list, _of_many, _required in cls().elementProperties()
    }


@cache
def _choice_names(cls: type[FHIRAbstractBase]) -> dict[str, tuple[str, ...]]:
    choices: dict[str, list[str]] = {}
    for _name, json_name, _typ, _is_list, of_many, _required in cls().elementProperties():
        if of_many:
            choices.setdefault(of_many, []).append(json_name)
    return {name: tuple(names) for name, names in choices.items()}


# ``cls`` is a ``type``: fhirclient has no type hints, and a class of unknown type does not
# count as hashable for the caches above.
def _walk(
    error: BaseException, cls: type | None, node: Any, path: str,
    prop: _Property | None, out: list[Issue],
) -> None:
    """Follow fhirclient's nested errors down the data, so each issue can quote the value
    the sender actually wrote at that element."""
    if isinstance(error, FHIRValidationError):
        for segment in (error.path.split(".") if error.path else []):
            if segment.isdigit():
                index = int(segment)
                path += f"[{index}]"
                node = node[index] if isinstance(node, list) and index < len(node) else None
                continue
            prop = _properties(cls).get(segment) if cls is not None else None
            name = prop.json_name if prop is not None else segment
            path += f".{name}"
            node = node.get(name) if isinstance(node, dict) else None
            cls = prop.type if prop is not None and _is_element(prop.type) else None
        for sub in error.errors:
            _walk(sub, cls, node, path, prop, out)
        return
    message = str(error.args[0]) if error.args else str(error)
    if isinstance(error, KeyError) and (match := _MISSING.search(message)):
        name = match.group(1)
        choices = _choice_names(cls).get(name, ()) if cls is not None else ()
        present = choices or (name,)
        if isinstance(node, dict) and any(node.get(key) is not None for key in present):
            return  # present but invalid: reported where fhirclient rejected it
        shown = f"{name}[x]" if choices else name
        out.append(_issue("required", f"{path}.{shown} is required and missing",
                          f"{path}.{shown}"))
        return
    if isinstance(error, AttributeError) and (match := _SUPERFLUOUS.search(message)):
        name = match.group(1)
        what = getattr(cls, "resource_type", "this element") if cls is not None else "it"
        out.append(_issue(
            "structure", f"{path}.{name} is not an element of {what} in FHIR R4 (4.0.1)",
            f"{path}.{name}",
        ))
        return
    out.extend(_type_issues(prop, node, path, message))


def _type_issues(prop: _Property | None, value: Any, path: str, message: str) -> list[Issue]:
    if prop is None:
        return [_issue("structure", f"{path}: {message}", path)]
    label = _label(prop.type)
    if prop.is_list:
        if not isinstance(value, list):
            return [_issue("structure", f"{path} must be an array (of {label}), got "
                           f"{_json_kind(value)}", path)]
        issues = [
            _value_issue(prop.type, item, f"{path}[{index}]", label)
            for index, item in enumerate(value) if not _fits(item, prop.type)
        ]
        return issues or [_issue("structure", f"{path}: {message}", path)]
    if not _fits(value, prop.type):
        return [_value_issue(prop.type, value, path, label)]
    return [_issue("structure", f"{path}: {message}", path)]


def _value_issue(typ: Any, value: Any, path: str, label: str) -> Issue:
    if isinstance(value, str) and isinstance(typ, type) and issubclass(typ, FHIRDate):
        return _issue("value", f"{path}: {value!r} is not a valid FHIR {label}", path)
    return _issue("structure", f"{path} must be {label}, got {_json_kind(value)}", path)


def _fits(value: Any, typ: Any) -> bool:
    if isinstance(typ, type) and issubclass(typ, FHIRDate):
        try:
            typ(value)
        except (TypeError, ValueError):
            return False
        return True
    if typ is bool:
        return isinstance(value, bool)
    if typ in (int, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if typ is str:
        return isinstance(value, str)
    if _is_element(typ):
        return isinstance(value, dict)
    return True


def _label(typ: Any) -> str:
    for date_type, label in (
        (FHIRInstant, "instant (e.g. 2025-03-12T08:30:00+08:00)"),
        (FHIRDateTime, "dateTime (e.g. 2025-03-12T08:30:00+08:00 or 2025-03-12)"),
        (FHIRTime, "time (hh:mm:ss)"),
        (FHIRDate, "date (YYYY, YYYY-MM or YYYY-MM-DD)"),
    ):
        if isinstance(typ, type) and issubclass(typ, date_type):
            return label
    simple = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if typ in simple:
        return simple[typ]
    if _is_element(typ):
        return f"an object ({getattr(typ, 'resource_type', typ.__name__)})"
    return getattr(typ, "__name__", str(typ))


def _is_element(typ: Any) -> bool:
    return isinstance(typ, type) and issubclass(typ, FHIRAbstractBase)


def _routing_issues(resource: dict, kind: str, root: str) -> list[Issue]:
    issues = [
        _issue("required", f"{root}.{name} is missing: {why}", f"{root}.{name}")
        for name, why in _ROUTING_NEEDS.get(kind, ())
        if _empty(resource.get(name))
    ]
    if kind in _SUBJECT_REQUIRED:
        issues.extend(_patient_reference_issues(resource, f"{root}.subject"))
    if kind == "ImagingStudy":
        issues.extend(_study_uid_issues(resource, root))
    return issues


def _patient_reference_issues(resource: dict, path: str) -> list[Issue]:
    """The patient must be identifiable from the resource alone (or its contained
    resources): a urn:uuid reference means nothing once the Bundle it pointed into is gone,
    and the patient is what decides the ward room."""
    subject = resource.get("subject")
    if _empty(subject):
        return [_issue("required", f"{path} is missing: routing needs the patient (a "
                       "reference to a Patient, or the patient's identifier)", path)]
    if not isinstance(subject, dict):
        return []  # reported by the structural check
    reference = subject.get("reference")
    identifier = subject.get("identifier")
    has_identifier = isinstance(identifier, dict) and bool(identifier.get("value"))
    declared = subject.get("type")
    if isinstance(declared, str) and declared != "Patient":
        return [_issue("value", f"{path} must refer to a Patient, not a {declared}", path)]
    if not isinstance(reference, str) or not reference:
        if has_identifier:
            return []
        return [_issue("required", f"{path} has neither a reference nor an identifier: "
                       "routing needs the patient", path)]
    target, _ = reference_parts(reference)
    if target:
        if target != "Patient":
            return [_issue("value", f"{path} must refer to a Patient, not a {target} "
                           f"({reference})", f"{path}.reference")]
        return []
    if reference.startswith("#") and _contained_patient(resource, reference[1:]):
        return []
    if has_identifier:
        return []
    return [_issue(
        "value",
        f"{path}.reference {reference!r} does not identify the patient outside this message: "
        "use a Patient/<id> reference or give subject.identifier (the medical record number)",
        f"{path}.reference",
    )]


def _contained_patient(resource: dict, local_id: str) -> bool:
    contained = resource.get("contained")
    return isinstance(contained, list) and any(
        isinstance(item, dict) and item.get("resourceType") == "Patient"
        and item.get("id") == local_id
        for item in contained
    )


def _study_uid_issues(resource: dict, root: str) -> list[Issue]:
    identifiers = resource.get("identifier")
    identifiers = identifiers if isinstance(identifiers, list) else []
    uids = [(index, item) for index, item in enumerate(identifiers)
            if isinstance(item, dict) and item.get("system") == DICOM_UID_SYSTEM]
    if not uids:
        return [_issue(
            "required",
            f"{root}.identifier has no Study Instance UID: images are fetched by it (an "
            f"identifier with system {DICOM_UID_SYSTEM} and value urn:oid:<uid>)",
            f"{root}.identifier",
        )]
    issues = []
    for index, item in uids:
        value = item.get("value")
        if not isinstance(value, str) or not _DICOM_UID.fullmatch(value) or len(value) > 72:
            issues.append(_issue(
                "value",
                f"{root}.identifier[{index}].value {value!r} is not a DICOM UID written as "
                "urn:oid:<uid> (digits and dots, at most 64 characters)",
                f"{root}.identifier[{index}].value",
            ))
    return issues


# -- small helpers ----------------------------------------------------------------------------


class _NotJson(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotJson(f"invalid JSON: {name} is not a JSON number (FHIR decimals must be finite)")


def _status(found: list[tuple[Issue, int]]) -> int:
    """One HTTP status for many issues: an authorisation refusal outranks a malformed body,
    which outranks unprocessable content."""
    statuses = {status for _, status in found}
    for status in (FORBIDDEN, BAD_REQUEST):
        if status in statuses:
            return status
    return UNPROCESSABLE


def _issue(code: str, diagnostics: str, expression: str = "", severity: str = "error") -> Issue:
    return Issue(severity, code, diagnostics, expression)


def _structure(diagnostics: str, expression: str = "") -> FhirInvalid:
    return FhirInvalid([_issue("structure", diagnostics, expression)], BAD_REQUEST)


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})" if len(value) <= 40 else "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
