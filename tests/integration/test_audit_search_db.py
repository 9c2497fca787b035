"""Searching the stored log on SQLite and PostgreSQL, and exporting what was found."""

from __future__ import annotations

import csv
import io
import json

import pytest
from fhir.resources.R4B.bundle import Bundle as R4BBundle
from fhirclient.models.bundle import Bundle as R4Bundle

from carematrix.audit import actions as A
from carematrix.audit.record import parse_time
from carematrix.audit.search import AuditQuery, AuditQueryInvalid, query_record, render, search
from carematrix.audit.verify import verify
from carematrix.hsdb.audit_store import append
from tests.integration.audit_workers import sample

T0 = parse_time("2026-11-18T08:00:00Z")
MINUTE = 60_000_000


@pytest.fixture
def hospital_day(audit_db):
    """A small day on the ward: logins, messages about two patients, a refusal, a download."""
    rows = [
        sample(0, action=A.AUTH_LOGIN, object=None, room=None, details={}, time=T0),
        sample(
            1,
            actor="@n3001:localhost",
            action=A.AUTH_LOGIN,
            object=None,
            room=None,
            details={},
            time=T0 + MINUTE,
        ),
        sample(2, patient="MRN-1", time=T0 + 2 * MINUTE),
        sample(
            3,
            actor="@n3001:localhost",
            patient="MRN-2",
            room="!icu:localhost",
            time=T0 + 3 * MINUTE,
        ),
        sample(
            4,
            actor="@n3001:localhost",
            action=A.POLICY_DENIED,
            outcome=A.DENIED,
            rule="room_class.post",
            room="!announce:localhost",
            time=T0 + 4 * MINUTE,
        ),
        sample(
            5,
            action=A.MEDIA_DOWNLOAD,
            object="mxc://localhost/xray1",
            patient="MRN-1",
            time=T0 + 5 * MINUTE,
        ),
        sample(6, action=A.AUTH_LOGOUT, object=None, room=None, details={}, time=T0 + 6 * MINUTE),
    ]
    with audit_db.transaction() as txn:
        append(txn, audit_db.dialect, rows)
    return audit_db


def find(db, **filters):
    with db.transaction(read_only=True) as txn:
        return [s.seq for s in search(txn, db.dialect, AuditQuery(**filters))]


def test_filters(hospital_day):
    db = hospital_day
    assert find(db, patient="MRN-1") == [6, 3]  # newest first
    assert find(db, patient="MRN-1", newest_first=False) == [3, 6]
    assert find(db, actor="@n3001:localhost") == [5, 4, 2]
    assert find(db, action="auth.") == [7, 2, 1]
    assert find(db, action="auth.*") == [7, 2, 1]
    assert find(db, action=A.AUTH_LOGIN) == [2, 1]
    assert find(db, room="!icu:localhost") == [4]
    assert find(db, outcome=A.DENIED) == [5]
    assert find(db, since=T0 + 2 * MINUTE, until=T0 + 5 * MINUTE) == [5, 4, 3]
    assert find(db, actor="@d1001:localhost", action="message.", since=T0) == [3]
    assert find(db, limit=2) == [7, 6]
    assert find(db, actor="@nobody:localhost") == []


def test_queries_that_cannot_run_say_why():
    with pytest.raises(AuditQueryInvalid, match="outcome 'ok'"):
        AuditQuery(outcome="ok")
    with pytest.raises(AuditQueryInvalid, match="must be before until"):
        AuditQuery(since=T0 + 1, until=T0)
    with pytest.raises(AuditQueryInvalid, match="limit"):
        AuditQuery(limit=0)


def test_outputs(hospital_day):
    db = hospital_day
    with db.transaction(read_only=True) as txn:
        rows = search(txn, db.dialect, AuditQuery(patient="MRN-1", newest_first=False))
    table = render(rows, "table").splitlines()
    assert table[0].split() == [
        "seq",
        "time",
        "actor",
        "action",
        "outcome",
        "object",
        "room",
        "patient",
        "rule",
    ]
    assert table[2].split()[:4] == [
        "3",
        "2026-11-18T08:02:00.000000Z",
        "@d1001:localhost",
        "message.send",
    ]
    assert len({line.index("@d1001") for line in table[2:]}) == 1  # columns line up

    as_json = json.loads(render(rows, "json"))
    assert [r["seq"] for r in as_json] == [3, 6]
    assert as_json[1]["object"] == "mxc://localhost/xray1"
    assert as_json[1]["details"] == {"msgtype": "m.text", "n": 5}

    parsed = list(csv.DictReader(io.StringIO(render(rows, "csv"))))
    assert [r["patient"] for r in parsed] == ["MRN-1", "MRN-1"]
    assert json.loads(parsed[0]["details"]) == {"msgtype": "m.text", "n": 2}
    assert parsed[0]["rule"] == ""

    fhir = json.loads(render(rows, "fhir", server_name="hospital.example"))
    R4Bundle(fhir, strict=True)
    R4BBundle.model_validate(fhir)
    assert fhir["total"] == 2
    assert fhir["entry"][1]["resource"]["action"] == "R"


def test_searching_is_itself_audited(hospital_day):
    db = hospital_day
    query = AuditQuery(patient="MRN-2", action="message.")
    with db.transaction() as txn:
        found = search(txn, db.dialect, query)
        append(txn, db.dialect, [query_record("@auditor:localhost", query, "csv", len(found))])
    with db.transaction(read_only=True) as txn:
        (entry,) = search(txn, db.dialect, AuditQuery(action=A.AUDIT_QUERY))
        assert verify(txn, db.dialect, {}).ok
    assert entry.record.actor == "@auditor:localhost"
    assert entry.record.patient == "MRN-2"  # shows up in that patient's trail
    assert dict(entry.record.details) == {
        "action": "message.",
        "limit": 100,
        "format": "csv",
        "results": 1,
    }
