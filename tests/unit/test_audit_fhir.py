"""FHIR export: every action becomes a valid R4 AuditEvent shaped after IHE BALP.

Validated twice: with fhirclient's models (generated from the FHIR 4.0.1 = R4
StructureDefinitions; strict mode refuses unknown elements, wrong types and missing
required elements) and with fhir.resources' R4B pydantic models (AuditEvent and Bundle have
the same elements in R4 and R4B; these also check primitive formats such as instant).
Neither checks required code bindings or invariants, so those are asserted here.
"""

from __future__ import annotations

import base64
import json

import pytest
from fhir.resources.R4B.bundle import Bundle as R4BBundle
from fhirclient.models.bundle import Bundle as R4Bundle

from carematrix.audit import actions as A
from carematrix.audit.fhir import DCM, MATRIX_USER, audit_event, bundle
from carematrix.audit.record import AuditRecord
from carematrix.hsdb.audit_store import StoredRecord

T = 1_795_000_000_123_456
ALL_ACTIONS = sorted(A.ACTIONS | {"appservice.role_page", "bridge.hl7.adt_received"})


def stored(seq: int = 1, **kw) -> StoredRecord:
    fields = {
        "actor": "@d1001:localhost",
        "action": A.MESSAGE_SEND,
        "object": "$e1:localhost",
        "time": T,
    }
    fields.update(kw)
    return StoredRecord(seq, AuditRecord(**fields), "0" * 64, "1" * 64)


def assert_r4_valid(resource: dict) -> None:
    data = json.loads(json.dumps(resource))  # exactly what a consumer would parse
    R4Bundle(data, strict=True)
    R4BBundle.model_validate(data)
    for entry in data["entry"]:
        event = entry["resource"]
        # Required bindings and invariant sev-1, which neither model library checks.
        assert event["action"] in {"C", "R", "U", "D", "E"}
        assert event["outcome"] in {"0", "4", "8", "12"}
        for agent in event["agent"]:
            if "network" in agent:
                assert agent["network"]["type"] in {"1", "2", "3", "4", "5"}
        for entity in event.get("entity", []):
            assert not ("name" in entity and "query" in entity)


def test_every_action_exports_as_a_valid_r4_bundle():
    rows = [
        stored(
            i + 1,
            action=a,
            room="!ward:localhost",
            patient="MRN-0042" if i % 2 else None,
            source="10.0.0.7" if i % 3 else "ws17.ward.example",
            outcome=A.DENIED if a == A.POLICY_DENIED else A.SUCCESS,
            rule="room_class.post" if a == A.POLICY_DENIED else None,
            details={"method": "POST", "count": i, "tags": ["a", "b"]},
        )
        for i, a in enumerate(ALL_ACTIONS)
    ]
    for kind in ("searchset", "collection"):
        b = bundle(rows, "hospital.example", kind)
        assert_r4_valid(b)
        assert len(b["entry"]) == len(ALL_ACTIONS)
    assert bundle(rows, "hospital.example")["total"] == len(rows)


def test_every_event_names_the_carematrix_action_as_a_subtype():
    for a in ALL_ACTIONS:
        event = audit_event(stored(action=a), "hospital.example")
        assert {"system": "urn:carematrix:audit-action", "code": a, "display": a} in event[
            "subtype"
        ]


@pytest.mark.parametrize(
    ("action", "type_code", "subtype_code", "verb"),
    [
        (A.AUTH_LOGIN, "110114", "110122", "E"),
        (A.AUTH_LOGOUT, "110114", "110123", "E"),
        (A.MESSAGE_SEND, "rest", "create", "C"),
        (A.MESSAGE_EDIT, "rest", "update", "U"),
        (A.MESSAGE_REDACT, "rest", "delete", "D"),
        (A.MEDIA_DOWNLOAD, "rest", "read", "R"),
        (A.ROOM_MEMBER_KICK, "rest", "update", "U"),
        (A.POLICY_DENIED, "110113", "110132", "E"),
        (A.POLICY_RELOAD, "110113", "110129", "U"),
        (A.AUDIT_QUERY, "110101", "search", "E"),
        ("bridge.hl7.adt_received", "110100", None, "E"),
    ],
)
def test_balp_type_subtype_and_action(action, type_code, subtype_code, verb):
    event = audit_event(stored(action=action), "hospital.example")
    assert event["type"]["code"] == type_code
    assert event["action"] == verb
    if subtype_code:
        assert event["subtype"][0]["code"] == subtype_code


def test_admin_api_follows_the_http_method():
    assert (
        audit_event(stored(action=A.ADMIN_API, details={"method": "DELETE"}), "h")["action"] == "D"
    )
    assert (
        audit_event(stored(action=A.ADMIN_API, details={"method": "GET"}), "h")["subtype"][0][
            "code"
        ]
        == "read"
    )
    assert audit_event(stored(action=A.ADMIN_API), "h")["subtype"][0]["code"] == "operation"


def test_outcomes_map_to_0_4_8():
    assert audit_event(stored(), "h")["outcome"] == "0"
    denied = audit_event(
        stored(action=A.POLICY_DENIED, outcome=A.DENIED, rule="room_class.post"), "h"
    )
    assert denied["outcome"] == "4"
    assert denied["outcomeDesc"] == "denied by rule room_class.post"
    assert audit_event(stored(action=A.AUTH_LOGIN_FAILED, outcome=A.FAILURE), "h")["outcome"] == "4"
    assert (
        audit_event(stored(action=A.POLICY_RELOAD_REJECTED, outcome=A.FAILURE), "h")["outcome"]
        == "8"
    )


def test_user_agent_patient_entity_and_observer():
    event = audit_event(
        stored(
            seq=77, source="10.0.0.7", patient="MRN-0042", room="!icu:localhost", process="worker2"
        ),
        "hospital.example",
        patient_system="urn:oid:1.2.3.4.5",
    )
    assert event["id"] == "audit-77"
    assert event["recorded"] == "2026-11-18T11:06:40.123456Z"
    (agent,) = event["agent"]
    assert agent["requestor"] is True
    assert agent["who"]["identifier"] == {"system": MATRIX_USER, "value": "@d1001:localhost"}
    assert agent["type"]["coding"][0]["code"] == "IRCP"
    assert agent["network"] == {"address": "10.0.0.7", "type": "2"}
    patient = [e for e in event["entity"] if e.get("role", {}).get("code") == "1"]
    assert patient == [
        {
            "what": {"identifier": {"system": "urn:oid:1.2.3.4.5", "value": "MRN-0042"}},
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "1",
                "display": "Person",
            },
            "role": {
                "system": "http://terminology.hl7.org/CodeSystem/object-role",
                "code": "1",
                "display": "Patient",
            },
        }
    ]
    described = [e["description"] for e in event["entity"] if "description" in e]
    assert described == ["Matrix event", "Matrix room"]
    assert event["source"]["observer"]["display"] == "CareMatrix hospital.example (worker2)"


def test_system_actor_is_an_application_agent():
    event = audit_event(stored(actor="policy-loader", action=A.POLICY_RELOAD, object=None), "h")
    assert event["agent"][0]["type"]["coding"][0] == {
        "system": DCM,
        "code": "110150",
        "display": "Application",
    }


def test_audit_query_carries_the_query_as_base64():
    event = audit_event(
        stored(action=A.AUDIT_QUERY, details={"actor": "@d1001:localhost", "results": 3}), "h"
    )
    query = [e for e in event["entity"] if "query" in e][0]
    assert json.loads(base64.b64decode(query["query"])) == {
        "actor": "@d1001:localhost",
        "results": 3,
    }


def test_validators_reject_a_broken_event():
    """The validation above is live: a malformed AuditEvent fails both libraries."""
    b = bundle([stored()], "h")
    b["entry"][0]["resource"]["recorded"] = "yesterday"
    with pytest.raises(Exception, match="recorded"):
        R4Bundle(json.loads(json.dumps(b)), strict=True)
    with pytest.raises(Exception, match="recorded"):
        R4BBundle.model_validate(b)
    b["entry"][0]["resource"]["recorded"] = "2026-11-18T11:06:40Z"
    b["entry"][0]["resource"]["agent"][0]["whom"] = "typo"
    with pytest.raises(Exception, match="whom"):
        R4Bundle(json.loads(json.dumps(b)), strict=True)
