"""A validated FHIR resource to the record the hospital routes on, the same records the HL7
v2 adapter produces, so routing does not care which standard a system speaks.

A resource that is not news for anyone (a preliminary result, a planned encounter, a Patient
sent as context) gives None. Only what routing cannot do without is required: a result
whose patient cannot be identified is refused rather than posted to nobody's room. Resources
fetched for id-only notifications reach this module unvalidated, so every read tolerates
elements of the wrong JSON type instead of crashing on them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from bridges.fhir.outcome import UNPROCESSABLE, FhirInvalid, Issue
from bridges.fhir.validate import (
    DICOM_UID_SYSTEM,
    parse_date,
    parse_datetime,
    reference_key,
    reference_parts,
)
from bridges.hl7.events import _is_cjk
from bridges.records import (
    AdtEvent,
    AdtTrigger,
    ImagingEvent,
    Observation,
    OrderEvent,
    Patient,
    ReportEvent,
    ResultEvent,
    Visit,
)

__all__ = ["Event", "extract_resource"]

Event = AdtEvent | ResultEvent | OrderEvent | ReportEvent | ImagingEvent

# Encounter.status to the ADT event it means; the rest (planned, cancelled, entered-in-error,
# unknown) is nothing a ward needs to hear about. in-progress becomes A02 when the location
# history shows a move.
_ADT_TRIGGERS: dict[str, AdtTrigger] = {
    "arrived": "A01",
    "in-progress": "A01",
    "triaged": "A04",
    "onleave": "A08",
    "finished": "A03",
}
_WARD_REQUIRED = frozenset({"A01", "A02", "A04"})
_FINAL_RESULT = frozenset({"final", "amended", "corrected"})
_FINAL_REPORT = frozenset({"final", "amended", "corrected", "appended"})
# ServiceRequest.status to ORC-1, the order control code the order list already knows.
_ORDER_CONTROL = {"active": "NW", "revoked": "CA", "completed": "SC"}
_ORDER_INTENTS = frozenset({
    "order", "original-order", "reflex-order", "filler-order", "instance-order", "plan",
})
# Interpretation codings read as OBX-8 flags: the v3 ObservationInterpretation codes are the
# table 0078 codes (H, L, HH, LL, A, AA, ...), and many senders leave the system out.
_INTERPRETATION_SYSTEMS = frozenset({
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
    "http://terminology.hl7.org/CodeSystem/v2-0078",
})
_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
_BED, _ROOM, _WARD = "bd", "ro", "wa"


def extract_resource(resource: dict, included: Mapping[str, dict] | None = None) -> Event | None:
    """``included`` holds resources sent along (a notification's or Bundle's other entries)
    by ``Type/id``: the Patient for its medical record number and name, the Encounter for the
    ward, the ServiceRequest for who ordered a result."""
    if not isinstance(resource, dict):
        raise _unprocessable("structure", "a FHIR resource must be a JSON object", "")
    kind = resource.get("resourceType")
    if kind == "Patient":
        return None
    handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
    if handler is None:
        raise _unprocessable(
            "not-supported", f"no clinical event is read from {kind!r} resources", "")
    return handler(resource, included or {})


# -- resources -----------------------------------------------------------------------------


def _encounter(resource: dict, included: Mapping[str, dict]) -> AdtEvent | None:
    trigger = _ADT_TRIGGERS.get(_str(resource.get("status")))
    if trigger is None:
        return None
    patient = _patient(resource, included)
    places = _Places(resource, included)
    visit = places.visit()
    prior_ward = ""
    if trigger == "A01" and places.moved():
        trigger, prior_ward = "A02", places.prior_ward() or visit.ward
    if trigger in _WARD_REQUIRED and not visit.ward:
        raise _unprocessable(
            "required", f"an Encounter {resource.get('status')} must say where the patient is "
            "(a location with status active): the ward decides which room is told",
            "Encounter.location")
    period = _dict(resource.get("period"))
    if trigger == "A03":
        event_time = parse_datetime(period.get("end"), "Encounter.period.end")
    elif trigger == "A02" and places.ward_start is not None:
        event_time = parse_datetime(*places.ward_start)
    else:
        event_time = parse_datetime(period.get("start"), "Encounter.period.start")
    return AdtEvent(trigger=trigger, patient=patient, visit=visit, prior_ward=prior_ward,
                    event_time=event_time)


def _observation(resource: dict, included: Mapping[str, dict]) -> ResultEvent | None:
    status = _str(resource.get("status"))
    if status not in _FINAL_RESULT:
        return None
    observations = _result_records(resource, included)
    if not observations:
        return None
    order = _order_of(resource, included)
    based_on = _list(resource.get("basedOn"))
    if order is not None:
        order_id = _placer(order)
    elif based_on:
        first = _dict(based_on[0])
        order_id = (reference_parts(_str(first.get("reference")))[1]
                    or _str(_dict(first.get("identifier")).get("value")))
    else:
        order_id = ""
    return ResultEvent(
        patient=_patient(resource, included),
        visit=_visit_of(resource, included),
        order_id=order_id,
        test=_concept_text(resource.get("code")),
        ordering_provider=_requester(order),
        observations=observations,
        observed_at=_observed_at(resource),
    )


def _diagnostic_report(resource: dict, included: Mapping[str, dict]) -> ReportEvent | None:
    status = _str(resource.get("status"))
    if status not in _FINAL_REPORT:
        return None
    report_id = _str(resource.get("id")) or _first_identifier(resource)
    if not report_id:
        raise _unprocessable("required", "the report has neither an id nor an identifier to "
                             "refer to it by", "DiagnosticReport.id")
    conclusion = _str(resource.get("conclusion"))
    if not conclusion:
        codes = _list(resource.get("conclusionCode"))
        conclusion = _concept_text(codes[0]) if codes else ""
    return ReportEvent(
        patient=_patient(resource, included),
        report_id=report_id,
        title=_concept_text(resource.get("code")),
        status=status,
        ordering_provider=_requester(_order_of(resource, included)),
        conclusion=conclusion,
        issued=parse_datetime(resource.get("issued"), "DiagnosticReport.issued"),
        visit=_visit_of(resource, included),
    )


def _imaging_study(resource: dict, included: Mapping[str, dict]) -> ImagingEvent | None:
    if resource.get("status") != "available":
        return None
    identifiers = [_dict(i) for i in _list(resource.get("identifier"))]
    study_uid = next((_str(i.get("value")).removeprefix("urn:oid:") for i in identifiers
                      if i.get("system") == DICOM_UID_SYSTEM and _str(i.get("value"))), "")
    if not study_uid:
        raise _unprocessable(
            "required", f"the study has no Study Instance UID (identifier with system "
            f"{DICOM_UID_SYSTEM}): its images cannot be fetched", "ImagingStudy.identifier")
    modalities: list[str] = []
    sources = [*_list(resource.get("modality")),
               *(_dict(series).get("modality") for series in _list(resource.get("series")))]
    for modality in sources:
        code = _modality_code(modality)
        if code and code not in modalities:
            modalities.append(code)
    return ImagingEvent(
        patient=_patient(resource, included),
        study_uid=study_uid,
        accession=_identifier_of_type(identifiers, "ACSN"),
        description=_str(resource.get("description")),
        modalities=tuple(modalities),
        started=parse_datetime(resource.get("started"), "ImagingStudy.started"),
        visit=_visit_of(resource, included),
    )


def _service_request(resource: dict, included: Mapping[str, dict]) -> OrderEvent | None:
    control = _ORDER_CONTROL.get(_str(resource.get("status")))
    if control is None or _str(resource.get("intent")) not in _ORDER_INTENTS:
        return None
    identifiers = [_dict(i) for i in _list(resource.get("identifier"))]
    return OrderEvent(
        message_type="OMG^O19",
        order_control=control,
        placer=_placer(resource),
        filler=_identifier_of_type(identifiers, "FILL"),
        patient=_patient(resource, included),
        visit=_visit_of(resource, included),
        test=_concept_text(resource.get("code")),
        ordering_provider=_requester(resource),
        priority=_str(resource.get("priority")),
        test_code=next(
            (_str(_dict(c).get("code")) for c in _list(_dict(resource.get("code")).get("coding"))
             if _str(_dict(c).get("code"))), "",
        ),
    )


_HANDLERS: dict[str, Callable[[dict, Mapping[str, dict]], Event | None]] = {
    "Encounter": _encounter,
    "Observation": _observation,
    "DiagnosticReport": _diagnostic_report,
    "ImagingStudy": _imaging_study,
    "ServiceRequest": _service_request,
}


# -- the patient ---------------------------------------------------------------------------


def _patient(resource: dict, included: Mapping[str, dict]) -> Patient:
    """The medical record number is what the hospital's rooms are keyed on, so the MR
    identifier of the Patient sent along wins over the reference's server id."""
    path = f"{resource.get('resourceType')}.subject"
    subject = _dict(resource.get("subject"))
    target = _resolve(subject, resource, included, "Patient") or {}
    kind, ref_id = reference_parts(_str(subject.get("reference")))
    patient_id = (
        _identifier_of_type([_dict(i) for i in _list(target.get("identifier"))], "MR")
        or _str(_dict(subject.get("identifier")).get("value"))
        or (ref_id if kind == "Patient" else "")
        or _first_identifier(target)
        or _str(target.get("id"))
    )
    if not patient_id:
        raise _unprocessable(
            "required", f"{path} does not identify the patient (a Patient/<id> reference or "
            "the patient's identifier): routing needs the patient", path)
    return Patient(
        id=patient_id,
        name=_str(subject.get("display")) or _human_name(target.get("name")),
        sex=_SEX.get(_str(target.get("gender")), ""),
        birth_date=parse_date(target.get("birthDate"), "Patient.birthDate"),
    )


def _human_name(names: Any) -> str:
    """Chinese names are family name then given name with no space (王建国), the rule the
    HL7 adapter uses; other names read the Western way, given before family."""
    candidates = [_dict(n) for n in _list(names) if isinstance(n, dict)]
    if not candidates:
        return ""
    chosen = next(
        (n for use in ("official", "usual") for n in candidates if n.get("use") == use),
        next((n for n in candidates if n.get("use") != "old"), candidates[0]),
    )
    family = _str(chosen.get("family"))
    given = [g for g in _list(chosen.get("given")) if isinstance(g, str)]
    if _is_cjk(family + "".join(given)):
        return family + "".join(given)
    return " ".join(part for part in (*given, family) if part) or _str(chosen.get("text"))


# -- where the patient is -------------------------------------------------------------------


class _Places:
    """Encounter.location read the way ADT reads PV1: the current ward (and room and bed
    when listed as their own locations, by physicalType) and the ward the patient left."""

    def __init__(self, encounter: dict, included: Mapping[str, dict]) -> None:
        self.included = included
        self.encounter = encounter
        # planned and reserved locations are where the patient is not (yet).
        entries = [_dict(e) for e in _list(encounter.get("location"))
                   if isinstance(_dict(e).get("location"), dict)]
        usable = [e for e in entries if e.get("status") not in ("planned", "reserved")]
        active = [e for e in usable if e.get("status") == "active"]
        current = active or [e for e in usable if e.get("status") != "completed"] or usable
        self.ward_entry = (_last(current, lambda e: _WARD in _kinds(e))
                           or _last(current, lambda e: not _kinds(e) & {_BED, _ROOM}))
        self.room_entry = _last(current, lambda e: _ROOM in _kinds(e))
        self.bed_entry = _last(current, lambda e: _BED in _kinds(e))
        # A finished stay lists every location as completed: none of them is a move away.
        completed = [] if current is usable else [
            e for e in usable if e.get("status") == "completed"]
        self.prior_ward_entry = _last(completed, lambda e: not _kinds(e) & {_BED, _ROOM})
        self.prior_bed_entry = _last(completed, lambda e: _BED in _kinds(e))
        self.ward_start: tuple[Any, str] | None = None
        for index, entry in enumerate(_list(encounter.get("location"))):
            if self.ward_entry is None or entry is not self.ward_entry:
                continue
            start = _dict(entry.get("period")).get("start")
            if start:
                self.ward_start = (start, f"Encounter.location[{index}].period.start")

    def code(self, entry: dict | None) -> str:
        return _location_code(entry.get("location"), self.included) if entry else ""

    def prior_ward(self) -> str:
        return self.code(self.prior_ward_entry)

    def moved(self) -> bool:
        """A different ward, or a different bed on the same ward: both are A02 in HL7."""
        ward, prior_ward = self.code(self.ward_entry), self.prior_ward()
        if prior_ward and prior_ward != ward:
            return True
        bed, prior_bed = self.code(self.bed_entry), self.code(self.prior_bed_entry)
        return bool(prior_bed and bed and prior_bed != bed and prior_ward in ("", ward))

    def visit(self) -> Visit:
        encounter = self.encounter
        return Visit(
            ward=self.code(self.ward_entry),
            room=self.code(self.room_entry),
            bed=self.code(self.bed_entry),
            attending=_attending(encounter),
            visit_number=(_identifier_of_type([_dict(i) for i in _list(
                encounter.get("identifier"))], "VN") or _first_identifier(encounter)
                or _str(encounter.get("id"))),
        )


def _visit_of(resource: dict, included: Mapping[str, dict]) -> Visit:
    """The ward of a result, report, study or order, when its Encounter came along; else
    empty, and the caller looks the ward up from its patient registry."""
    reference = _dict(resource.get("encounter"))
    encounter = _resolve(reference, resource, included, "Encounter")
    return _Places(encounter, included).visit() if encounter else Visit()


def _location_code(reference: Any, included: Mapping[str, dict]) -> str:
    """Ward codes as the clinical policy knows them (ICU, 5A): the identifier, else the
    Location's id, else its display text."""
    reference = _dict(reference)
    value = _str(_dict(reference.get("identifier")).get("value"))
    if value:
        return value
    location = _resolve(reference, {}, included, "Location")
    if location and _first_identifier(location):
        return _first_identifier(location)
    kind, ref_id = reference_parts(_str(reference.get("reference")))
    return ref_id if kind == "Location" else _str(reference.get("display"))


def _kinds(entry: dict) -> set[str]:
    return _codes(entry.get("physicalType"))


def _attending(encounter: dict) -> str:
    for participant in _list(encounter.get("participant")):
        participant = _dict(participant)
        if any("ATND" in _codes(t) for t in _list(participant.get("type"))):
            individual = _dict(participant.get("individual"))
            return (_str(_dict(individual.get("identifier")).get("value"))
                    or _str(individual.get("display")))
    return ""


# -- results ---------------------------------------------------------------------------------


def _result_records(resource: dict, included: Mapping[str, dict]) -> tuple[Observation, ...]:
    """One record per component when there are components (a blood pressure, a blood gas
    panel); else the Observation itself; a panel holding only hasMember references gives its
    members found among ``included``, or nothing to route if they are not there."""
    status = _str(resource.get("status"))
    components = [_dict(c) for c in _list(resource.get("component"))]
    if components:
        return tuple(
            _record(c, str(n), status) for n, c in enumerate(components, start=1))
    if _value_key(resource) or resource.get("dataAbsentReason"):
        return (_record(resource, "1", status),)
    members = [
        member for ref in _list(resource.get("hasMember"))
        if (member := _resolve(_dict(ref), resource, included, "Observation")) is not None
    ]
    if members:
        return tuple(
            _record(m, str(n), _str(m.get("status")) or status)
            for n, m in enumerate(members, start=1))
    if resource.get("hasMember"):
        return ()
    raise _unprocessable(
        "required", "a final result needs a value, components or a dataAbsentReason",
        "Observation.value[x]")


def _record(element: dict, set_id: str, status: str) -> Observation:
    codings = [_dict(c) for c in _list(_dict(element.get("code")).get("coding"))]
    value, units, value_type = _value(element)
    return Observation(
        set_id=set_id,
        code=next((_str(c.get("code")) for c in codings if _str(c.get("code"))), ""),
        text=_concept_text(element.get("code")),
        value=value,
        units=units,
        reference_range=_reference_range(element.get("referenceRange")),
        flags=_flags(element.get("interpretation")),
        status=status,
        value_type=value_type,
    )


def _value_key(element: dict) -> str:
    return next((key for key in element if key.startswith("value") and key != "value"), "")


def _value(element: dict) -> tuple[str, str, str]:
    """(value, units, HL7 value type): numbers as written without a float's trailing
    ``.0`` (``5`` rather than ``5.0``), coded values as their text, and a result not done
    as the reason given (dataAbsentReason)."""
    key = _value_key(element)
    value = element.get(key)
    if key == "valueQuantity":
        quantity = _dict(value)
        number = _number(quantity.get("value"))
        comparator = _str(quantity.get("comparator"))
        return (comparator + number, _units(quantity), "SN" if comparator else "NM")
    if key in ("valueInteger", "valueDecimal"):
        return _number(value), "", "NM"
    if key == "valueCodeableConcept":
        return _concept_text(value), "", "CWE"
    if key == "valueBoolean":
        return ("true" if value is True else "false" if value is False else ""), "", "ST"
    if key == "valueRange":
        low, high = _dict(_dict(value).get("low")), _dict(_dict(value).get("high"))
        return (f"{_number(low.get('value'))}-{_number(high.get('value'))}".strip("-"),
                _units(low) or _units(high), "SN")
    if key == "valueRatio":
        numerator = _dict(_dict(value).get("numerator"))
        denominator = _dict(_dict(value).get("denominator"))
        return (f"{_number(numerator.get('value'))}:{_number(denominator.get('value'))}",
                "", "SN")
    if key == "valuePeriod":
        period = _dict(value)
        return (f"{_str(period.get('start'))} - {_str(period.get('end'))}".strip(" -"), "",
                "DR")
    if key == "valueDateTime":
        return _str(value), "", "DTM"
    if key == "valueTime":
        return _str(value), "", "TM"
    if key == "valueString":
        return _str(value), "", "ST"
    if key:
        return "", "", ""  # SampledData, Attachment: nothing a notice can show
    return _concept_text(element.get("dataAbsentReason")), "", ""


def _flags(interpretations: Any) -> tuple[str, ...]:
    flags: list[str] = []
    for concept in _list(interpretations):
        concept = _dict(concept)
        for coding in _list(concept.get("coding")):
            coding = _dict(coding)
            code = _str(coding.get("code")).strip().upper()
            system = coding.get("system")
            known = system is None or _str(system) in _INTERPRETATION_SYSTEMS
            if code and known and code not in flags:
                flags.append(code)
        text = _str(concept.get("text")).strip()
        if ("危急" in text or text.lower().startswith("critical")) and "AA" not in flags:
            flags.append("AA")
    return tuple(flags)


def _reference_range(ranges: Any) -> str:
    ranges = _list(ranges)
    if not ranges:
        return ""
    first = _dict(ranges[0])
    low = _number(_dict(first.get("low")).get("value"))
    high = _number(_dict(first.get("high")).get("value"))
    if low and high:
        return f"{low}-{high}"
    if low:
        return f">={low}"
    if high:
        return f"<={high}"
    return _str(first.get("text"))


def _observed_at(resource: dict) -> datetime | None:
    for key in ("effectiveDateTime", "effectiveInstant"):
        if resource.get(key):
            return parse_datetime(resource[key], f"Observation.{key}")
    start = _dict(resource.get("effectivePeriod")).get("start")
    if start:
        return parse_datetime(start, "Observation.effectivePeriod.start")
    return parse_datetime(resource.get("issued"), "Observation.issued")


# -- orders ----------------------------------------------------------------------------------


def _order_of(resource: dict, included: Mapping[str, dict]) -> dict | None:
    for reference in _list(resource.get("basedOn")):
        order = _resolve(_dict(reference), resource, included, "ServiceRequest")
        if order is not None:
            return order
    return None


def _placer(order: dict) -> str:
    """The placer order number, the key results and orders are matched on in HL7 (ORC-2),
    so a FHIR result and a FHIR order name the same order the same way."""
    identifiers = [_dict(i) for i in _list(order.get("identifier"))]
    return _identifier_of_type(identifiers, "PLAC") or _str(order.get("id"))


def _requester(order: dict | None) -> str:
    """A staff number or nothing: a display name cannot be paged."""
    if not order:
        return ""
    return _str(_dict(_dict(order.get("requester")).get("identifier")).get("value"))


# -- references and datatypes ---------------------------------------------------------------


def _resolve(
    reference: dict, resource: dict, included: Mapping[str, dict], kind: str
) -> dict | None:
    """The resource a reference points at, among the contained resources (``#id``) or the
    resources sent along; None when absent or of another type."""
    ref = _str(reference.get("reference"))
    if not ref:
        return None
    if ref.startswith("#"):
        found = next((_dict(c) for c in _list(resource.get("contained"))
                      if _dict(c).get("id") == ref[1:]), None)
    else:
        found = included.get(reference_key(ref)) or included.get(ref)
    if isinstance(found, dict) and found.get("resourceType") == kind:
        return found
    return None


def _concept_text(concept: Any) -> str:
    concept = _dict(concept)
    codings = [_dict(c) for c in _list(concept.get("coding"))]
    return (_str(concept.get("text"))
            or next((_str(c.get("display")) for c in codings if _str(c.get("display"))), "")
            or next((_str(c.get("code")) for c in codings if _str(c.get("code"))), ""))


def _codes(concept: Any) -> set[str]:
    return {_str(_dict(c).get("code")) for c in _list(_dict(concept).get("coding"))} - {""}


def _modality_code(modality: Any) -> str:
    """R4 modality is a Coding; R5 made it a CodeableConcept."""
    modality = _dict(modality)
    return _str(modality.get("code")) or next(iter(sorted(_codes(modality))), "")


def _identifier_of_type(identifiers: list[dict], code: str) -> str:
    return next((_str(i.get("value")) for i in identifiers
                 if code in _codes(i.get("type")) and _str(i.get("value"))), "")


def _first_identifier(resource: dict) -> str:
    return next((_str(_dict(i).get("value")) for i in _list(resource.get("identifier"))
                 if _str(_dict(i).get("value"))), "")


def _units(quantity: dict) -> str:
    return _str(quantity.get("unit")) or _str(quantity.get("code"))


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _last(entries: list[dict], test: Callable[[dict], bool]) -> dict | None:
    return next((e for e in reversed(entries) if test(e)), None)


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _unprocessable(code: str, diagnostics: str, expression: str) -> FhirInvalid:
    return FhirInvalid([Issue("error", code, diagnostics, expression)], UNPROCESSABLE)
