"""Audit records as FHIR R4 AuditEvent resources, shaped after IHE BALP where it fits.

IHE Basic Audit Log Patterns (BALP) describe how a RESTful create/read/update/delete, a
login and a security alert look as AuditEvents. Matrix operations map onto those patterns
(sending a message creates an object, a redaction deletes one, a media download reads
one); the rest use the DICOM event types for security alerts, user authentication,
application activity and audit-log use. Every event also carries the CareMatrix action as
a subtype coding, so a consumer can always filter on exactly what happened.

Identifier systems for Matrix IDs are fixed URNs (Matrix IDs are globally unique already);
the patient identifier system is the hospital's and should be configured (``patient_system``).
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Sequence
from typing import Any

from carematrix.audit import actions as A
from carematrix.audit.chain import canonical_json
from carematrix.audit.record import iso_time, now_us
from carematrix.hsdb.audit_store import StoredRecord

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"

ACTION_SYSTEM = "urn:carematrix:audit-action"
MATRIX_USER = "urn:carematrix:matrix:user-id"
MATRIX_ROOM = "urn:carematrix:matrix:room-id"
MATRIX_EVENT = "urn:carematrix:matrix:event-id"
MATRIX_MEDIA = "urn:carematrix:matrix:mxc"
OTHER_OBJECT = "urn:carematrix:object-id"
PROCESS = "urn:carematrix:process"
DEFAULT_PATIENT_SYSTEM = "urn:carematrix:patient-id"

Coding = dict[str, str]


def _c(system: str, code: str, display: str) -> Coding:
    return {"system": system, "code": code, "display": display}


REST = _c(EVENT_TYPE, "rest", "Restful Operation")
USER_AUTHENTICATION = _c(DCM, "110114", "User Authentication")
SECURITY_ALERT = _c(DCM, "110113", "Security Alert")
APPLICATION_ACTIVITY = _c(DCM, "110100", "Application Activity")
AUDIT_LOG_USED = _c(DCM, "110101", "Audit Log Used")
LOGIN = _c(DCM, "110122", "Login")
LOGOUT = _c(DCM, "110123", "Logout")
SECURITY_CONFIGURATION = _c(DCM, "110129", "Security Configuration")
RESTRICTED_FUNCTION = _c(DCM, "110132", "Use of Restricted Function")
USER_SECURITY_ATTRIBUTES = _c(DCM, "110137", "User Security Attributes Changed")


def _rest(code: str) -> Coding:
    return _c(RESTFUL, code, code)


# action -> (type, BALP/DICOM subtype or None, FHIR action code C/R/U/D/E)
MAPPING: dict[str, tuple[Coding, Coding | None, str]] = {
    A.AUTH_LOGIN: (USER_AUTHENTICATION, LOGIN, "E"),
    A.AUTH_LOGIN_FAILED: (USER_AUTHENTICATION, LOGIN, "E"),
    A.AUTH_LOGOUT: (USER_AUTHENTICATION, LOGOUT, "E"),
    A.ROOM_CREATE: (REST, _rest("create"), "C"),
    A.ROOM_MEMBER_INVITE: (REST, _rest("update"), "U"),
    A.ROOM_MEMBER_JOIN: (REST, _rest("update"), "U"),
    A.ROOM_MEMBER_LEAVE: (REST, _rest("update"), "U"),
    A.ROOM_MEMBER_KICK: (REST, _rest("update"), "U"),
    A.ROOM_MEMBER_BAN: (REST, _rest("update"), "U"),
    A.ROOM_STATE: (REST, _rest("update"), "U"),
    A.MESSAGE_SEND: (REST, _rest("create"), "C"),
    A.MESSAGE_EDIT: (REST, _rest("update"), "U"),
    A.MESSAGE_REDACT: (REST, _rest("delete"), "D"),
    A.MESSAGE_BURN: (REST, _rest("delete"), "D"),
    A.MEDIA_UPLOAD: (REST, _rest("create"), "C"),
    A.MEDIA_DOWNLOAD: (REST, _rest("read"), "R"),
    A.MEDIA_THUMBNAIL: (REST, _rest("read"), "R"),
    A.POLICY_DENIED: (SECURITY_ALERT, RESTRICTED_FUNCTION, "E"),
    A.POLICY_RELOAD: (SECURITY_ALERT, SECURITY_CONFIGURATION, "U"),
    A.POLICY_RELOAD_REJECTED: (SECURITY_ALERT, SECURITY_CONFIGURATION, "U"),
    A.ORG_SYNC: (SECURITY_ALERT, USER_SECURITY_ATTRIBUTES, "U"),
    A.AUDIT_QUERY: (AUDIT_LOG_USED, _rest("search"), "E"),
}
# admin.api: the HTTP method says which RESTful interaction it was.
_ADMIN_METHODS = {
    "GET": ("read", "R"),
    "POST": ("create", "C"),
    "PUT": ("update", "U"),
    "PATCH": ("patch", "U"),
    "DELETE": ("delete", "D"),
}
_OUTCOMES = {A.SUCCESS: "0", A.DENIED: "4", A.FAILURE: "8"}


def classify(action: str, details: dict[str, Any]) -> tuple[Coding, list[Coding], str]:
    """(type, subtypes, action code) for a CareMatrix action."""
    own = _c(ACTION_SYSTEM, action, action)
    if action == A.ADMIN_API:
        method = str(details.get("method", "")).upper()
        code, verb = _ADMIN_METHODS.get(method, ("operation", "E"))
        return REST, [_rest(code), own], verb
    if action in MAPPING:
        type_, subtype, verb = MAPPING[action]
        return type_, [subtype, own] if subtype else [own], verb
    return APPLICATION_ACTIVITY, [own], "E"  # appservice.* and bridge.*


def outcome_code(action: str, outcome: str) -> str:
    """0 success, 4 minor failure (refused; a wrong password), 8 serious failure."""
    if action == A.AUTH_LOGIN_FAILED:
        return "4"
    return _OUTCOMES[outcome]


def _network(address: str) -> dict[str, str]:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return {"address": address, "type": "1"}  # machine name
    return {"address": address, "type": "2"}  # IP address


def _object_entity(obj: str) -> dict[str, Any]:
    """Entity for the object acted on; its kind follows from the Matrix sigil."""
    if obj.startswith("@"):
        system, description = MATRIX_USER, "Matrix user"
        type_, role = _c(ENTITY_TYPE, "1", "Person"), _c(OBJECT_ROLE, "6", "User")
    else:
        if obj.startswith("$"):
            system, description = MATRIX_EVENT, "Matrix event"
        elif obj.startswith("!"):
            system, description = MATRIX_ROOM, "Matrix room"
        elif obj.startswith("mxc://"):
            system, description = MATRIX_MEDIA, "Matrix media"
        else:
            system, description = OTHER_OBJECT, "CareMatrix object"
        type_, role = _c(ENTITY_TYPE, "2", "System Object"), _c(OBJECT_ROLE, "4", "Domain Resource")
    return {
        "what": {"identifier": {"system": system, "value": obj}},
        "type": type_,
        "role": role,
        "description": description,
    }


def _detail_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def audit_event(
    stored: StoredRecord,
    server_name: str,
    patient_system: str = DEFAULT_PATIENT_SYSTEM,
) -> dict[str, Any]:
    """One stored record as an R4 AuditEvent (JSON-ready dict)."""
    r = stored.record
    details = r.fields()["details"]
    type_, subtypes, verb = classify(r.action, details)
    is_user = r.actor.startswith("@")
    agent: dict[str, Any] = {
        "type": {
            "coding": [
                _c(PARTICIPATION, "IRCP", "information recipient")
                if is_user
                else _c(DCM, "110150", "Application")
            ]
        },
        "who": {
            "identifier": {"system": MATRIX_USER if is_user else PROCESS, "value": r.actor},
            "display": r.actor,
        },
        "requestor": True,
    }
    if r.source:
        agent["network"] = _network(r.source)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"audit-{stored.seq}",
        "type": type_,
        "subtype": subtypes,
        "action": verb,
        "recorded": r.iso_time,
        "outcome": outcome_code(r.action, r.outcome),
        "agent": [agent],
        "source": {
            "site": server_name,
            "observer": {
                "identifier": {"system": PROCESS, "value": f"{server_name}/{r.process}"},
                "display": f"CareMatrix {server_name} ({r.process})",
            },
            "type": [_c(SOURCE_TYPE, "4", "Application Server")],
        },
    }
    if r.outcome != A.SUCCESS:
        event["outcomeDesc"] = (
            f"{r.outcome} by rule {r.rule}" if r.rule else f"{r.action}: {r.outcome}"
        )
    entities: list[dict[str, Any]] = []
    # FHIR strings may not be empty: a detail without a value is left out.
    detail = [
        {"type": k, "valueString": text}
        for k, v in sorted(details.items())
        if (text := _detail_value(v)).strip()
    ]
    if r.rule:
        detail.append({"type": "rule", "valueString": r.rule})
    if r.action == A.AUDIT_QUERY:
        # BALP query pattern: the search itself, as base64, on an entity of role Query.
        entities.append(
            {
                "type": _c(ENTITY_TYPE, "2", "System Object"),
                "role": _c(OBJECT_ROLE, "24", "Query"),
                "query": base64.b64encode(canonical_json(details)).decode("ascii"),
            }
        )
    elif r.object:
        entities.append(_object_entity(r.object))
    if r.room and r.room != r.object:
        entities.append(_object_entity(r.room))
    if detail:
        if entities and "query" not in entities[0]:
            entities[0]["detail"] = detail
        else:
            entities.append({"type": _c(ENTITY_TYPE, "4", "Other"), "detail": detail})
    if r.patient:
        entities.append(
            {
                "what": {"identifier": {"system": patient_system, "value": r.patient}},
                "type": _c(ENTITY_TYPE, "1", "Person"),
                "role": _c(OBJECT_ROLE, "1", "Patient"),
            }
        )
    if entities:
        event["entity"] = entities
    return event


def bundle(
    rows: Sequence[StoredRecord],
    server_name: str,
    bundle_type: str = "searchset",
    patient_system: str = DEFAULT_PATIENT_SYSTEM,
) -> dict[str, Any]:
    """An R4 Bundle (``searchset`` for search results, ``collection`` for an export)."""
    if bundle_type not in ("searchset", "collection"):
        raise ValueError(f"bundle type must be searchset or collection, got {bundle_type!r}")
    out: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": bundle_type,
        "timestamp": iso_time(now_us()),
    }
    if bundle_type == "searchset":
        out["total"] = len(rows)
    entries = []
    for s in rows:
        entry: dict[str, Any] = {"resource": audit_event(s, server_name, patient_system)}
        if bundle_type == "searchset":
            entry["search"] = {"mode": "match"}
        entries.append(entry)
    out["entry"] = entries
    return out
