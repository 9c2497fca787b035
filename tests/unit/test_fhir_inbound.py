"""FHIR R4 inbound adapter: what the ward, the lab alert and the order list receive from a
Chinese hospital's EMR and LIS over FHIR, and the OperationOutcome a sender sees when we
refuse its resource."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.bundle import Bundle as R5Bundle
from fhir.resources.R4B.bundle import Bundle as R4BBundle
from fhir.resources.R4B.operationoutcome import OperationOutcome as R4BOperationOutcome
from fhirclient.models.bundle import Bundle as R4Bundle
from fhirclient.models.operationoutcome import OperationOutcome as R4OperationOutcome

from bridges.fhir import (
    RESOURCE_TYPES,
    FhirInvalid,
    Issue,
    extract_resource,
    ok_outcome,
    operation_outcome,
    parse_json,
    parse_notification,
    validate_bundle_entries,
    validate_resource,
)
from bridges.records import AdtEvent, ImagingEvent, OrderEvent, ReportEvent, ResultEvent

CST = timezone(timedelta(hours=8))
EMR = frozenset(RESOURCE_TYPES)
LIS = frozenset({"Observation", "DiagnosticReport"})
BASE = "https://his.renhe.example/fhir"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PHYSICAL_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
BACKPORT_STATUS = ("http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                   "backport-subscription-status-r4")
# The R4 value sets of OperationOutcome.issue.severity and .code (required bindings), which
# fhir.resources does not enforce.
SEVERITIES = {"fatal", "error", "warning", "information"}
ISSUE_TYPES = {
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown",
    "expired", "forbidden", "suppressed", "processing", "not-supported", "duplicate",
    "multiple-matches", "not-found", "deleted", "too-long", "code-invalid", "extension",
    "too-costly", "business-rule", "conflict", "transient", "lock-error", "no-store",
    "exception", "timeout", "incomplete", "throttled", "informational",
}

PATIENT = {
    "resourceType": "Patient",
    "id": "pat-0012345",
    "identifier": [
        {"type": {"coding": [{"system": V2_0203, "code": "NNCHN"}]},
         "system": "urn:oid:2.16.156.10011.1.1", "value": "110101196503121234"},
        {"type": {"coding": [{"system": V2_0203, "code": "MR"}]},
         "system": "urn:oid:1.2.156.112604.1.2.1", "value": "00012345"},
    ],
    "name": [{"use": "official", "family": "王", "given": ["建国"]}],
    "gender": "male",
    "birthDate": "1965-03-12",
}

POTASSIUM = {
    "resourceType": "Observation",
    "id": "obs-k-20250312-001",
    "meta": {"versionId": "1"},
    "status": "final",
    "category": [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
        "code": "laboratory"}]}],
    "code": {
        "coding": [{"system": "http://loinc.org", "code": "2823-3",
                    "display": "Potassium [Moles/volume] in Serum or Plasma"}],
        "text": "血钾",
    },
    "subject": {"reference": "Patient/pat-0012345"},
    "encounter": {"reference": "Encounter/enc-V20250312001"},
    "basedOn": [{"reference": "ServiceRequest/sr-lab-778"}],
    "effectiveDateTime": "2025-03-12T08:30:00+08:00",
    "issued": "2025-03-12T09:05:12+08:00",
    "valueQuantity": {"value": 6.8, "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                      "code": "mmol/L"},
    "interpretation": [{
        "coding": [{"system": V3_INTERPRETATION, "code": "HH", "display": "Critical high"}],
        "text": "危急值",
    }],
    "referenceRange": [{"low": {"value": 3.5, "unit": "mmol/L"},
                        "high": {"value": 5.3, "unit": "mmol/L"}}],
}


def location(ref: str, status: str, kind: str, start: str, end: str | None = None,
             **extra: Any) -> dict:
    period = {"start": start, **({"end": end} if end else {})}
    return {
        "location": {"reference": f"Location/{ref}", **extra},
        "status": status,
        "physicalType": {"coding": [{"system": PHYSICAL_TYPE, "code": kind}]},
        "period": period,
    }


# Admitted to cardiology 5A bed 12 on the 12th, moved to ICU bed 3 on the 13th.
TRANSFER = {
    "resourceType": "Encounter",
    "id": "enc-V20250312001",
    "identifier": [{"type": {"coding": [{"system": V2_0203, "code": "VN"}]},
                    "system": "urn:oid:1.2.156.112604.1.2.3", "value": "V20250312001"}],
    "status": "in-progress",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP",
              "display": "inpatient encounter"},
    "subject": {"reference": "Patient/pat-0012345", "display": "王建国"},
    "participant": [{
        "type": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
            "code": "ATND"}]}],
        "individual": {"reference": "Practitioner/D2002", "identifier": {"value": "D2002"},
                       "display": "张伟"},
    }],
    "period": {"start": "2025-03-12T08:30:00+08:00"},
    "location": [
        location("5A", "completed", "wa", "2025-03-12T08:30:00+08:00",
                 "2025-03-13T14:15:00+08:00", display="心内科5A病区"),
        location("5A-12", "completed", "bd", "2025-03-12T08:30:00+08:00",
                 "2025-03-13T14:15:00+08:00", display="5A 12床"),
        location("ICU", "active", "wa", "2025-03-13T14:15:00+08:00", display="重症监护室"),
        location("ICU-03", "active", "bd", "2025-03-13T14:15:00+08:00",
                 identifier={"value": "03"}, display="ICU 3床"),
    ],
}

LAB_ORDER = {
    "resourceType": "ServiceRequest",
    "id": "sr-lab-778",
    "identifier": [
        {"type": {"coding": [{"system": V2_0203, "code": "PLAC"}]},
         "system": "urn:oid:1.2.156.112604.1.3.1", "value": "ORD778"},
        {"type": {"coding": [{"system": V2_0203, "code": "FILL"}]},
         "system": "urn:oid:1.2.156.112604.1.3.2", "value": "LIS20250312-0091"},
    ],
    "status": "active",
    "intent": "order",
    "priority": "stat",
    "code": {"coding": [{"system": "http://loinc.org", "code": "24326-1",
                         "display": "Electrolytes panel"}], "text": "电解质"},
    "subject": {"reference": "Patient/pat-0012345"},
    "encounter": {"reference": "Encounter/enc-V20250312001"},
    "authoredOn": "2025-03-12T08:10:00+08:00",
    "requester": {"reference": "Practitioner/D1001", "identifier": {"value": "D1001"},
                  "display": "李娜"},
}

CT_ORDER = {
    "resourceType": "ServiceRequest",
    "id": "sr-ct-551",
    "status": "completed",
    "intent": "order",
    "code": {"text": "胸部CT平扫"},
    "subject": {"reference": "Patient/pat-0012345"},
    "requester": {"reference": "Practitioner/D1001", "identifier": {"value": "D1001"},
                  "display": "李娜"},
}

CT_REPORT = {
    "resourceType": "DiagnosticReport",
    "id": "dr-ct-20250313-01",
    "status": "final",
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                              "code": "RAD"}]}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2",
                         "display": "CT Chest"}], "text": "胸部CT平扫"},
    "subject": {"reference": "Patient/pat-0012345"},
    "basedOn": [{"reference": "ServiceRequest/sr-ct-551"}],
    "issued": "2025-03-13T16:40:00+08:00",
    "conclusion": "双肺下叶少许渗出，建议复查。",
}

STUDY_UID = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
CT_STUDY = {
    "resourceType": "ImagingStudy",
    "id": "is-ct-20250313-01",
    "identifier": [
        {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"},
        {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
         "system": "urn:oid:1.2.156.112604.1.4", "value": "CT20250313001"},
    ],
    "status": "available",
    "modality": [{"system": DCM, "code": "CT"}],
    "subject": {"reference": "Patient/pat-0012345"},
    "started": "2025-03-13T15:02:11+08:00",
    "description": "胸部CT平扫",
    "series": [
        {"uid": f"{STUDY_UID}.1", "modality": {"system": DCM, "code": "CT"},
         "numberOfInstances": 120},
        {"uid": f"{STUDY_UID}.2", "modality": {"system": DCM, "code": "SR"},
         "numberOfInstances": 1},
    ],
}

INCLUDED = {
    "Patient/pat-0012345": PATIENT,
    "Encounter/enc-V20250312001": TRANSFER,
    "ServiceRequest/sr-lab-778": LAB_ORDER,
    "ServiceRequest/sr-ct-551": CT_ORDER,
}


def with_(resource: dict, **changes: Any) -> dict:
    """A copy with top-level elements replaced; None removes one."""
    changed = copy.deepcopy(resource)
    for key, value in changes.items():
        if value is None:
            changed.pop(key, None)
        else:
            changed[key] = value
    return changed


def assert_valid_outcome(outcome: dict) -> None:
    R4BOperationOutcome.model_validate(outcome)
    R4OperationOutcome(outcome, strict=True)
    assert outcome["issue"]
    for issue in outcome["issue"]:
        assert issue["severity"] in SEVERITIES
        assert issue["code"] in ISSUE_TYPES


def refusal(call: Any, *args: Any) -> FhirInvalid:
    """The FhirInvalid a call raises, after checking the OperationOutcome a sender would get
    from it is valid FHIR."""
    with pytest.raises(FhirInvalid) as info:
        call(*args)
    assert info.value.issues
    assert_valid_outcome(operation_outcome(info.value.issues))
    return info.value


def expressions(exc: FhirInvalid) -> dict[str, str]:
    return {issue.expression: issue.code for issue in exc.issues}


# -- OperationOutcome --------------------------------------------------------------------------


def test_operation_outcome_lists_each_issue_with_its_element():
    outcome = operation_outcome([
        Issue("error", "required", "Observation.status is missing", "Observation.status"),
        Issue("warning", "value", "unit not UCUM"),
    ])
    assert_valid_outcome(outcome)
    assert outcome == {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "required", "diagnostics": "Observation.status is missing",
         "expression": ["Observation.status"]},
        {"severity": "warning", "code": "value", "diagnostics": "unit not UCUM"},
    ]}


def test_ok_outcome_is_one_informational_issue():
    outcome = ok_outcome("accepted")
    assert_valid_outcome(outcome)
    assert outcome["issue"] == [
        {"severity": "information", "code": "informational", "diagnostics": "accepted"}]


def test_issue_codes_outside_the_fhir_value_sets_are_a_programming_error():
    with pytest.raises(ValueError, match="issue type"):
        Issue("error", "missing", "x")
    with pytest.raises(ValueError, match="severity"):
        Issue("critical", "required", "x")
    with pytest.raises(ValueError, match="at least one issue"):
        operation_outcome([])


# -- parsing the body ----------------------------------------------------------------------------


def test_parse_json_reads_utf8_with_or_without_bom():
    body = json.dumps(PATIENT, ensure_ascii=False).encode()
    assert parse_json(body) == PATIENT
    assert parse_json(b"\xef\xbb\xbf" + body) == PATIENT


def test_bad_json_names_line_and_column():
    body = b'{\n  "resourceType": "Observation",\n  "status": "final"\n  "code": {}\n}'
    exc = refusal(parse_json, body)
    assert exc.status == 400
    assert exc.issues[0].code == "structure"
    assert "line 4, column 3" in exc.issues[0].diagnostics


def test_gbk_body_is_refused_as_not_utf8():
    body = '{"resourceType": "Patient", "name": [{"text": "王建国"}]}'.encode("gbk")
    exc = refusal(parse_json, body)
    assert exc.status == 400
    assert exc.issues[0].code == "structure"
    assert "UTF-8" in exc.issues[0].diagnostics
    assert "line 1, column 48" in exc.issues[0].diagnostics  # the first byte of 王


@pytest.mark.parametrize("body", [b"", b"  \n", b'{"valueDecimal": NaN}'])
def test_empty_body_and_non_json_numbers_are_refused(body: bytes):
    assert refusal(parse_json, body).issues[0].code == "structure"


# -- validating resources ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "resource", [PATIENT, POTASSIUM, TRANSFER, LAB_ORDER, CT_ORDER, CT_REPORT, CT_STUDY])
def test_realistic_resources_pass_and_come_back_unchanged(resource: dict):
    before = copy.deepcopy(resource)
    assert validate_resource(resource, EMR) == before


def test_missing_status_is_reported_at_observation_status():
    exc = refusal(validate_resource, with_(POTASSIUM, status=None), LIS)
    assert expressions(exc) == {"Observation.status": "required"}
    assert exc.status == 400  # status is 1..1 in FHIR R4 itself


def test_wrong_json_type_is_caught_by_strict_r4_validation():
    wrong = with_(POTASSIUM, valueQuantity={"value": "6.8", "unit": "mmol/L"})
    exc = refusal(validate_resource, wrong, LIS)
    assert exc.status == 400
    [issue] = exc.issues
    assert issue.expression == "Observation.valueQuantity.value"
    assert issue.code == "structure"
    assert "must be a number" in issue.diagnostics and "'6.8'" in issue.diagnostics


def test_every_problem_is_reported_at_once_with_its_path():
    broken = with_(
        POTASSIUM,
        status=None,
        subject=None,
        effectiveDateTime="2025-03-12T08:30:00",  # no offset
        triggeredBy=[{"observation": {"reference": "Observation/x"}, "type": "reflex"}],  # R5
        code={"coding": [{"system": "http://loinc.org", "code": 2823}]},
    )
    exc = refusal(validate_resource, broken, LIS)
    assert expressions(exc) == {
        "Observation.status": "required",
        "Observation.effectiveDateTime": "value",
        "Observation.triggeredBy": "structure",
        "Observation.code.coding[0].code": "structure",
        "Observation.subject": "required",
    }
    assert exc.status == 400


def test_json_names_not_python_names_in_paths():
    wrong = with_(TRANSFER, **{"class": {"code": 1}})
    exc = refusal(validate_resource, wrong, EMR)
    assert expressions(exc) == {"Encounter.class.code": "structure"}


def test_missing_subject_alone_is_unprocessable_not_malformed():
    exc = refusal(validate_resource, with_(POTASSIUM, subject=None), LIS)
    assert exc.status == 422
    assert expressions(exc) == {"Observation.subject": "required"}
    assert "patient" in exc.issues[0].diagnostics


@pytest.mark.parametrize("subject, expression", [
    ({"reference": "Group/ward-5a"}, "Observation.subject.reference"),
    ({"reference": "urn:uuid:2b0a7e0c-6a0e-4b8f-9d53-1f2e3a4b5c6d"},
     "Observation.subject.reference"),
    ({"reference": "Device/pump-1", "type": "Device"}, "Observation.subject"),
])
def test_subject_must_identify_a_patient(subject: dict, expression: str):
    exc = refusal(validate_resource, with_(POTASSIUM, subject=subject), LIS)
    assert expressions(exc) == {expression: "value"}
    assert exc.status == 422


@pytest.mark.parametrize("subject", [
    {"reference": f"{BASE}/Patient/pat-0012345/_history/3"},
    {"identifier": {"system": "urn:oid:1.2.156.112604.1.2.1", "value": "00012345"}},
    {"reference": "urn:uuid:2b0a7e0c-6a0e-4b8f-9d53-1f2e3a4b5c6d",
     "identifier": {"value": "00012345"}},
])
def test_subject_forms_that_identify_the_patient_are_accepted(subject: dict):
    assert validate_resource(with_(POTASSIUM, subject=subject), LIS)["subject"] == subject


@pytest.mark.parametrize("resource, missing, status", [
    # Optional in R4, required by routing: well-formed but unprocessable.
    (with_(TRANSFER, subject=None), "Encounter.subject", 422),
    (with_(CT_REPORT, subject=None), "DiagnosticReport.subject", 422),
    (with_(CT_STUDY, identifier=CT_STUDY["identifier"][1:]), "ImagingStudy.identifier", 422),
    # 1..1 in R4 itself: not valid FHIR.
    (with_(LAB_ORDER, subject=None), "ServiceRequest.subject", 400),
    (with_(LAB_ORDER, intent=None), "ServiceRequest.intent", 400),
    (with_(CT_STUDY, subject=None), "ImagingStudy.subject", 400),
])
def test_elements_routing_needs_are_required(resource: dict, missing: str, status: int):
    exc = refusal(validate_resource, resource, EMR)
    assert expressions(exc) == {missing: "required"}
    assert exc.status == status


def test_study_uid_must_be_written_as_urn_oid():
    wrong = with_(CT_STUDY, identifier=[{"system": "urn:dicom:uid", "value": STUDY_UID}])
    exc = refusal(validate_resource, wrong, EMR)
    assert expressions(exc) == {"ImagingStudy.identifier[0].value": "value"}


def test_source_may_not_send_types_outside_its_allow_list():
    exc = refusal(validate_resource, TRANSFER, LIS)
    assert exc.status == 403
    [issue] = exc.issues
    assert issue.code == "forbidden"
    assert "Encounter" in issue.diagnostics and "not allowed" in issue.diagnostics


def test_unsupported_type_is_refused_before_the_allow_list():
    medication = {"resourceType": "MedicationRequest", "id": "m1", "status": "active"}
    exc = refusal(validate_resource, medication, EMR | {"MedicationRequest"})
    assert exc.status == 422
    assert exc.issues[0].code == "not-supported"
    assert "MedicationRequest" in exc.issues[0].diagnostics


@pytest.mark.parametrize("data", [[POTASSIUM], {"status": "final"}, "Observation"])
def test_body_that_is_not_a_resource(data: Any):
    exc = refusal(validate_resource, data, EMR)
    assert exc.status == 400
    assert exc.issues[0].code == "structure"


# -- Bundles pushed to the base ----------------------------------------------------------------


def transaction(*resources: dict, kind: str = "transaction") -> dict:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [{
            "fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
        } for r in resources],
    }


def test_bundle_entries_come_back_when_all_are_valid():
    bundle = transaction(PATIENT, TRANSFER, POTASSIUM)
    R4Bundle(bundle, strict=True)
    assert validate_bundle_entries(bundle, EMR) == [PATIENT, TRANSFER, POTASSIUM]


def test_bundle_issues_carry_the_entry_index():
    bundle = transaction(PATIENT, TRANSFER, with_(POTASSIUM, status=None),
                         with_(CT_REPORT, subject=None))
    exc = refusal(validate_bundle_entries, bundle, EMR)
    assert expressions(exc) == {
        "Bundle.entry[2].resource.status": "required",
        "Bundle.entry[3].resource.subject": "required",
    }
    assert exc.status == 400


def test_bundle_with_a_forbidden_entry_is_forbidden():
    exc = refusal(validate_bundle_entries, transaction(POTASSIUM, TRANSFER), LIS)
    assert exc.status == 403
    assert expressions(exc) == {"Bundle.entry[1].resource": "forbidden"}


def test_message_bundle_skips_its_header():
    header = {"resourceType": "MessageHeader", "id": "mh1",
              "eventCoding": {"system": "urn:oid:1.2.156.112604", "code": "lab-result"},
              "source": {"endpoint": f"{BASE}/lis"}}
    bundle = {"resourceType": "Bundle", "type": "message", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": header},
        {"fullUrl": f"{BASE}/Observation/{POTASSIUM['id']}", "resource": POTASSIUM},
    ]}
    assert validate_bundle_entries(bundle, LIS) == [POTASSIUM]


def test_search_results_are_not_a_push():
    exc = refusal(validate_bundle_entries, transaction(POTASSIUM, kind="searchset"), LIS)
    assert expressions(exc) == {"Bundle.type": "not-supported"}


# -- extracting events -------------------------------------------------------------------------


def test_critical_potassium_with_its_context():
    event = extract_resource(POTASSIUM, INCLUDED)
    assert isinstance(event, ResultEvent)
    assert event.patient.id == "00012345"  # the MRN, not the server id
    assert event.patient.name == "王建国"
    assert event.patient.sex == "M"
    assert event.patient.birth_date == date(1965, 3, 12)
    assert event.visit.ward == "ICU" and event.visit.bed == "03"
    assert event.order_id == "ORD778"
    assert event.ordering_provider == "D1001"
    assert event.test == "血钾"
    assert event.observed_at == datetime(2025, 3, 12, 8, 30, tzinfo=CST)
    [potassium] = event.observations
    assert (potassium.code, potassium.text, potassium.value, potassium.units) == (
        "2823-3", "血钾", "6.8", "mmol/L")
    assert potassium.reference_range == "3.5-5.3"
    assert potassium.flags == ("HH", "AA")  # the code, and the text 危急值
    assert potassium.critical
    assert event.critical_observations == (potassium,)


def test_result_without_context_leaves_ward_to_the_registry():
    event = extract_resource(POTASSIUM)
    assert isinstance(event, ResultEvent)
    assert event.patient.id == "pat-0012345"
    assert event.patient.name == ""
    assert event.visit.ward == ""
    assert event.order_id == "sr-lab-778"
    assert event.ordering_provider == ""


def test_components_are_one_record_each():
    pressure = with_(
        POTASSIUM, id="obs-bp-1", code={"text": "血压"}, valueQuantity=None,
        interpretation=None, referenceRange=None, basedOn=None,
        subject={"reference": "Patient/x", "identifier": {"value": "00012345"},
                 "display": "王建国"},
        component=[
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6",
                                  "display": "收缩压"}]},
             "valueQuantity": {"value": 182.0, "unit": "mmHg"},
             "interpretation": [{"coding": [{"code": "h"}]}]},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4",
                                  "display": "舒张压"}]},
             "valueQuantity": {"value": 95, "code": "mm[Hg]"}},
        ],
    )
    validate_resource(pressure, LIS)
    event = extract_resource(pressure)
    assert isinstance(event, ResultEvent)
    assert event.patient.id == "00012345" and event.patient.name == "王建国"
    assert [(o.set_id, o.code, o.text, o.value, o.units, o.flags) for o in event.observations] == [
        ("1", "8480-6", "收缩压", "182", "mmHg", ("H",)),
        ("2", "8462-4", "舒张压", "95", "mm[Hg]", ()),
    ]
    assert not event.critical_observations


def test_coded_result_reads_as_its_text_and_critical_text_pages():
    hbsag = with_(POTASSIUM, valueQuantity=None, referenceRange=None,
                  code={"text": "乙肝表面抗原"},
                  valueCodeableConcept={"coding": [{"system": "http://snomed.info/sct",
                                                    "code": "10828004", "display": "阳性"}]},
                  interpretation=[{"text": "Critical"}])
    event = extract_resource(hbsag)
    assert isinstance(event, ResultEvent)
    [record] = event.observations
    assert (record.value, record.value_type, record.flags) == ("阳性", "CWE", ("AA",))


def test_local_interpretation_systems_are_not_flags():
    local = with_(POTASSIUM, interpretation=[{"coding": [
        {"system": "urn:oid:1.2.156.112604.9", "code": "HH"}]}])
    event = extract_resource(local)
    assert isinstance(event, ResultEvent)
    assert event.observations[0].flags == ()


@pytest.mark.parametrize("status", ["preliminary", "registered", "cancelled"])
def test_unfinished_results_are_not_routed(status: str):
    assert extract_resource(with_(POTASSIUM, status=status), INCLUDED) is None


def test_transfer_icu_from_5a():
    event = extract_resource(TRANSFER, INCLUDED)
    assert isinstance(event, AdtEvent)
    assert event.trigger == "A02"
    assert event.prior_ward == "5A"
    assert (event.visit.ward, event.visit.bed) == ("ICU", "03")
    assert event.visit.attending == "D2002"
    assert event.visit.visit_number == "V20250312001"
    assert event.patient.id == "00012345"
    assert event.patient.name == "王建国"  # subject.display
    assert event.event_time == datetime(2025, 3, 13, 14, 15, tzinfo=CST)


def test_admission_and_discharge():
    admitted = with_(TRANSFER, location=[
        location("5A", "active", "wa", "2025-03-12T08:30:00+08:00"),
        location("5A-12", "active", "bd", "2025-03-12T08:30:00+08:00"),
    ])
    event = extract_resource(admitted)
    assert isinstance(event, AdtEvent)
    assert (event.trigger, event.visit.ward, event.visit.bed, event.prior_ward) == (
        "A01", "5A", "5A-12", "")
    assert event.event_time == datetime(2025, 3, 12, 8, 30, tzinfo=CST)

    discharged = with_(
        TRANSFER, status="finished",
        period={"start": "2025-03-12T08:30:00+08:00", "end": "2025-03-20T10:00:00+08:00"},
        location=[{**entry, "status": "completed"} for entry in TRANSFER["location"]])
    event = extract_resource(discharged)
    assert isinstance(event, AdtEvent)
    assert (event.trigger, event.visit.ward) == ("A03", "ICU")
    assert event.event_time == datetime(2025, 3, 20, 10, tzinfo=CST)


@pytest.mark.parametrize("status", ["planned", "cancelled", "entered-in-error"])
def test_encounters_that_did_not_happen_are_not_routed(status: str):
    assert extract_resource(with_(TRANSFER, status=status)) is None


def test_admission_without_a_ward_is_refused():
    exc = refusal(extract_resource, with_(TRANSFER, location=None))
    assert exc.status == 422
    assert expressions(exc) == {"Encounter.location": "required"}


def test_report_tells_who_ordered_it():
    event = extract_resource(CT_REPORT, INCLUDED)
    assert isinstance(event, ReportEvent)
    assert (event.report_id, event.title, event.status) == (
        "dr-ct-20250313-01", "胸部CT平扫", "final")
    assert event.ordering_provider == "D1001"
    assert event.conclusion == "双肺下叶少许渗出，建议复查。"
    assert event.issued == datetime(2025, 3, 13, 16, 40, tzinfo=CST)
    assert event.patient.id == "00012345"
    # Without the order the requester is unknown: a display name cannot be paged.
    assert extract_resource(CT_REPORT).ordering_provider == ""
    assert extract_resource(with_(CT_REPORT, status="preliminary"), INCLUDED) is None


def test_imaging_study_available():
    event = extract_resource(CT_STUDY, INCLUDED)
    assert isinstance(event, ImagingEvent)
    assert event.study_uid == STUDY_UID
    assert event.accession == "CT20250313001"
    assert event.modalities == ("CT", "SR")
    assert event.description == "胸部CT平扫"
    assert event.started == datetime(2025, 3, 13, 15, 2, 11, tzinfo=CST)
    assert extract_resource(with_(CT_STUDY, status="registered")) is None


@pytest.mark.parametrize("status, control", [
    ("active", "NW"), ("revoked", "CA"), ("completed", "SC")])
def test_orders(status: str, control: str):
    event = extract_resource(with_(LAB_ORDER, status=status), INCLUDED)
    assert isinstance(event, OrderEvent)
    assert (event.message_type, event.order_control) == ("OMG^O19", control)
    assert (event.placer, event.filler) == ("ORD778", "LIS20250312-0091")
    assert (event.test, event.ordering_provider, event.priority) == ("电解质", "D1001", "stat")
    assert event.visit.ward == "ICU"


def test_order_without_identifiers_is_placed_under_its_id():
    event = extract_resource(CT_ORDER)
    assert isinstance(event, OrderEvent)
    assert (event.placer, event.filler, event.order_control) == ("sr-ct-551", "", "SC")


@pytest.mark.parametrize("changes", [{"status": "draft"}, {"intent": "proposal"}])
def test_drafts_and_proposals_are_not_orders(changes: dict):
    assert extract_resource(with_(LAB_ORDER, **changes)) is None


def test_patient_is_context_not_an_event():
    assert extract_resource(PATIENT) is None


def test_patient_identity_is_required_for_routing():
    anonymous = with_(POTASSIUM, subject={"display": "王建国"})
    exc = refusal(extract_resource, anonymous)
    assert exc.status == 422
    assert expressions(exc) == {"Observation.subject": "required"}


def test_western_names_read_given_first():
    smith = with_(PATIENT, name=[{"use": "old", "family": "Smith", "given": ["Jo"]},
                                 {"family": "Smith", "given": ["John", "A."]}])
    event = extract_resource(POTASSIUM, {**INCLUDED, "Patient/pat-0012345": smith})
    assert isinstance(event, ResultEvent)
    assert event.patient.name == "John A. Smith"


def test_unvalidated_bad_date_is_refused_with_its_element():
    # id-only notifications fetch the resource from the HIS; it reaches extraction as is.
    exc = refusal(extract_resource, with_(POTASSIUM, effectiveDateTime="2025-03-12 08:30"))
    assert exc.status == 400
    assert expressions(exc) == {"Observation.effectiveDateTime": "value"}


def test_date_only_reads_as_midnight_utc():
    event = extract_resource(with_(POTASSIUM, effectiveDateTime="2025-03-12"))
    assert isinstance(event, ResultEvent)
    assert event.observed_at == datetime(2025, 3, 12, tzinfo=UTC)


# -- Subscription notifications -----------------------------------------------------------------

SUBSCRIPTION = f"{BASE}/Subscription/critical-labs"
TOPIC = "http://renhe.example/fhir/SubscriptionTopic/critical-lab-result"
OBS_URL = f"{BASE}/Observation/{POTASSIUM['id']}"
PATIENT_URL = f"{BASE}/Patient/{PATIENT['id']}"


def subscription_status(kind: str = "event-notification", events: bool = True,
                        version: str = "R5") -> dict:
    status: dict[str, Any] = {
        "resourceType": "SubscriptionStatus",
        "status": "active",
        "type": kind,
        "eventsSinceSubscriptionStart": "42",
        "subscription": {"reference": SUBSCRIPTION},
        "topic": TOPIC,
    }
    if events:
        status["notificationEvent"] = [{
            "eventNumber": "42",
            "timestamp": "2025-03-12T09:05:13+08:00",
            "focus": {"reference": OBS_URL},
            "additionalContext": [{"reference": PATIENT_URL}],
        }]
    return status


def r5_notification(kind: str = "event-notification", full: bool = True) -> dict:
    entries: list[dict] = [{"fullUrl": "urn:uuid:9bbf3b5e-0c7d-4f1e-9a3a-1c2d3e4f5a6b",
                            "resource": subscription_status(kind, kind in (
                                "event-notification", "query-event"))}]
    if full:
        entries += [{"fullUrl": OBS_URL, "resource": POTASSIUM},
                    {"fullUrl": PATIENT_URL, "resource": PATIENT}]
    return {"resourceType": "Bundle", "id": "notification-42",
            "type": "subscription-notification", "timestamp": "2025-03-12T09:05:13+08:00",
            "entry": entries}


def r4b_notification() -> dict:
    return {
        "resourceType": "Bundle", "id": "notification-42", "type": "history",
        "timestamp": "2025-03-12T09:05:13+08:00",
        "entry": [
            {"fullUrl": "urn:uuid:9bbf3b5e-0c7d-4f1e-9a3a-1c2d3e4f5a6b",
             "resource": subscription_status(),
             "request": {"method": "GET", "url": f"{SUBSCRIPTION}/$status"},
             "response": {"status": "200"}},
            {"fullUrl": OBS_URL, "resource": POTASSIUM,
             "request": {"method": "PUT", "url": f"Observation/{POTASSIUM['id']}"},
             "response": {"status": "200"}},
            {"fullUrl": PATIENT_URL, "resource": PATIENT,
             "request": {"method": "PUT", "url": f"Patient/{PATIENT['id']}"},
             "response": {"status": "200"}},
        ],
    }


def backport_notification(kind: str = "event-notification", focus: bool = True) -> dict:
    event_parts = [
        {"name": "event-number", "valueString": "42"},
        {"name": "timestamp", "valueInstant": "2025-03-12T09:05:13+08:00"},
        {"name": "focus", "valueReference": {"reference": OBS_URL}},
        {"name": "additional-context", "valueReference": {"reference": PATIENT_URL}},
    ]
    if not focus:
        del event_parts[2]
    parameters = {
        "resourceType": "Parameters",
        "meta": {"profile": [BACKPORT_STATUS]},
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": SUBSCRIPTION}},
            {"name": "topic", "valueCanonical": TOPIC},
            {"name": "status", "valueCode": "active"},
            {"name": "type", "valueCode": kind},
            {"name": "events-since-subscription-start", "valueString": "42"},
            {"name": "notification-event", "part": event_parts},
        ],
    }
    return {
        "resourceType": "Bundle", "id": "notification-42", "type": "history",
        "meta": {"profile": ["http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                             "backport-subscription-notification-r4"]},
        "timestamp": "2025-03-12T09:05:13+08:00",
        "entry": [
            {"fullUrl": "urn:uuid:9bbf3b5e-0c7d-4f1e-9a3a-1c2d3e4f5a6b",
             "resource": parameters,
             "request": {"method": "GET", "url": f"{SUBSCRIPTION}/$status"},
             "response": {"status": "200"}},
            {"fullUrl": OBS_URL, "resource": POTASSIUM,
             "request": {"method": "PUT", "url": f"Observation/{POTASSIUM['id']}"},
             "response": {"status": "200"}},
            {"fullUrl": PATIENT_URL, "resource": PATIENT,
             "request": {"method": "PUT", "url": f"Patient/{PATIENT['id']}"},
             "response": {"status": "200"}},
        ],
    }


def test_notification_fixtures_are_valid_fhir_of_their_version():
    R5Bundle.model_validate(r5_notification())
    R5Bundle.model_validate(r5_notification(full=False))
    R4BBundle.model_validate(r4b_notification())
    R4Bundle(backport_notification(), strict=True)


@pytest.mark.parametrize("bundle", [r5_notification(), r4b_notification(),
                                    backport_notification()],
                         ids=["R5", "R4B", "R4-backport"])
def test_full_resource_notification_to_a_critical_result(bundle: dict):
    note = parse_notification(bundle)
    assert (note.kind, note.subscription, note.topic) == (
        "event-notification", SUBSCRIPTION, TOPIC)
    assert (note.status, note.events_since_start) == ("active", "42")
    assert set(note.included) == {"Observation/obs-k-20250312-001", "Patient/pat-0012345"}
    [event] = note.events
    assert event.number == "42"
    assert event.focus == "Observation/obs-k-20250312-001"
    assert event.resource == POTASSIUM
    assert event.timestamp == datetime(2025, 3, 12, 9, 5, 13, tzinfo=CST)
    assert event.context == ("Patient/pat-0012345",)

    resource = validate_resource(event.resource, LIS)
    result = extract_resource(resource, note.included)
    assert isinstance(result, ResultEvent)
    assert (result.patient.id, result.patient.name) == ("00012345", "王建国")
    assert [o.value for o in result.critical_observations] == ["6.8"]


def test_id_only_notification_names_the_resource_to_fetch():
    note = parse_notification(r5_notification(full=False))
    [event] = note.events
    assert (event.number, event.focus, event.resource) == (
        "42", "Observation/obs-k-20250312-001", None)
    assert note.included == {}


def test_event_focus_given_as_the_entry_urn_uuid_is_matched():
    bundle = r5_notification()
    bundle["entry"][1]["fullUrl"] = "urn:uuid:0f0e0d0c-0b0a-4909-8807-060504030201"
    bundle["entry"][0]["resource"]["notificationEvent"][0]["focus"] = {
        "reference": "urn:uuid:0f0e0d0c-0b0a-4909-8807-060504030201"}
    [event] = parse_notification(bundle).events
    assert (event.focus, event.resource) == ("Observation/obs-k-20250312-001", POTASSIUM)


@pytest.mark.parametrize("kind", ["handshake", "heartbeat"])
def test_handshake_and_heartbeat_carry_no_events(kind: str):
    note = parse_notification(r5_notification(kind, full=False))
    assert (note.kind, note.subscription, note.events) == (kind, SUBSCRIPTION, ())
    backport = parse_notification(backport_notification(kind))
    assert (backport.kind, backport.events) == (kind, ())


def test_notification_that_is_not_a_bundle():
    exc = refusal(parse_notification, subscription_status())
    assert exc.status == 400
    assert expressions(exc) == {"Bundle": "structure"}


def test_notification_without_status_entry():
    bundle = r5_notification()
    bundle["entry"] = bundle["entry"][1:]
    exc = refusal(parse_notification, bundle)
    assert expressions(exc) == {"Bundle.entry[0].resource": "structure"}


def test_parameters_without_the_backport_profile_are_not_a_status():
    bundle = backport_notification()
    del bundle["entry"][0]["resource"]["meta"]
    exc = refusal(parse_notification, bundle)
    assert expressions(exc) == {"Bundle.entry[0].resource": "structure"}


def test_unknown_notification_type_and_bundle_type():
    bundle = r5_notification()
    bundle["type"] = "collection"
    bundle["entry"][0]["resource"]["type"] = "event"
    exc = refusal(parse_notification, bundle)
    assert expressions(exc) == {"Bundle.type": "value",
                                "Bundle.entry[0].resource.type": "value"}


def test_event_without_focus_is_refused_at_the_event():
    bundle = r5_notification()
    del bundle["entry"][0]["resource"]["notificationEvent"][0]["focus"]
    exc = refusal(parse_notification, bundle)
    assert expressions(exc) == {
        "Bundle.entry[0].resource.notificationEvent[0].focus": "required"}

    exc = refusal(parse_notification, backport_notification(focus=False))
    assert expressions(exc) == {"Bundle.entry[0].resource.parameter[5].part": "required"}


def test_missing_subscription_and_bad_timestamp_are_reported_together():
    bundle = r4b_notification()
    status = bundle["entry"][0]["resource"]
    del status["subscription"]
    status["notificationEvent"][0]["timestamp"] = "2025-03-12T09:05:13"
    exc = refusal(parse_notification, bundle)
    assert expressions(exc) == {
        "Bundle.entry[0].resource.subscription.reference": "required",
        "Bundle.entry[0].resource.notificationEvent[0].timestamp": "value",
    }


def test_panel_of_members_reads_the_members_sent_along():
    sodium = with_(POTASSIUM, id="obs-na-1", code={"text": "血钠"}, interpretation=None,
                   valueQuantity={"value": 139, "unit": "mmol/L"}, referenceRange=None)
    panel = with_(POTASSIUM, id="obs-panel-1", code={"text": "电解质"}, valueQuantity=None,
                  interpretation=None, referenceRange=None,
                  hasMember=[{"reference": "Observation/obs-k-20250312-001"},
                             {"reference": "Observation/obs-na-1"}])
    validate_resource(panel, LIS)
    members = {"Observation/obs-k-20250312-001": POTASSIUM, "Observation/obs-na-1": sodium}
    event = extract_resource(panel, {**INCLUDED, **members})
    assert isinstance(event, ResultEvent)
    assert event.test == "电解质"
    assert [(o.text, o.value, o.flags) for o in event.observations] == [
        ("血钾", "6.8", ("HH", "AA")), ("血钠", "139", ())]
    # Members not sent along arrive (and are routed) on their own.
    assert extract_resource(panel, INCLUDED) is None


def test_final_result_without_any_value_is_refused():
    exc = refusal(extract_resource, with_(POTASSIUM, valueQuantity=None))
    assert expressions(exc) == {"Observation.value[x]": "required"}
    not_done = with_(POTASSIUM, valueQuantity=None, interpretation=None,
                     dataAbsentReason={"text": "标本溶血"})
    event = extract_resource(not_done)
    assert isinstance(event, ResultEvent)
    assert event.observations[0].value == "标本溶血"


def test_contained_patient_identifies_the_subject():
    contained_patient = with_(PATIENT, id="p1")
    observation = with_(POTASSIUM, subject={"reference": "#p1"}, contained=[contained_patient])
    validate_resource(observation, LIS)
    event = extract_resource(observation)
    assert isinstance(event, ResultEvent)
    assert (event.patient.id, event.patient.name) == ("00012345", "王建国")
