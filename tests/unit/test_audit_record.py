"""Audit records: what may be recorded, and the privacy rule that keeps clinical content out."""

from __future__ import annotations

import pytest

from carematrix.audit import actions as A
from carematrix.audit.record import AuditRecord, AuditRecordInvalid, iso_time, parse_time

T = 1_795_000_000_123_456


def rec(**kw) -> AuditRecord:
    base = {
        "actor": "@d1001:localhost",
        "action": A.MESSAGE_SEND,
        "object": "$e:localhost",
        "time": T,
    }
    base.update(kw)
    return AuditRecord(**base)


def test_a_typical_record_is_accepted_and_frozen():
    r = rec(
        room="!ward:localhost", patient="MRN-0042", details={"msgtype": "m.image", "size": 52311}
    )
    assert r.outcome == "success" and r.process == "main"
    with pytest.raises(AttributeError):
        r.actor = "@other:localhost"
    with pytest.raises(TypeError):
        r.details["size"] = 1


def test_every_vocabulary_action_and_the_open_namespaces_are_accepted():
    for action in sorted(A.ACTIONS):
        rec(action=action)
    rec(action="appservice.role_page")
    rec(action="bridge.hl7.adt_received")


@pytest.mark.parametrize(
    ("action", "says"),
    [
        ("message.sent", "not in the audit vocabulary"),
        ("Auth.Login", "lower-case dotted"),
        ("login", "lower-case dotted"),
        ("bridge." + "x" * 40, "longer than 32"),
    ],
)
def test_unknown_or_malformed_actions_are_refused(action, says):
    with pytest.raises(AuditRecordInvalid, match=says):
        rec(action=action)


@pytest.mark.parametrize("key", ["body", "content", "formatted_body", "text", "Body", "caption"])
def test_details_with_message_text_keys_are_refused(key):
    with pytest.raises(AuditRecordInvalid, match="metadata only, never message text"):
        rec(details={key: "hi"})


def test_long_detail_values_are_refused_with_the_reason():
    rec(details={"filename_hash": "a" * 512})
    with pytest.raises(AuditRecordInvalid, match=r"details\['note'\] is 513 characters"):
        rec(details={"note": "a" * 513})
    with pytest.raises(AuditRecordInvalid, match=r"details\['tags'\]\[1\] is 600"):
        rec(details={"tags": ["ok", "b" * 600]})


@pytest.mark.parametrize(
    ("details", "says"),
    [
        ({"nested": {"body": "x"}}, "nested object"),
        ({"img": b"\x89PNG"}, "has type bytes"),
        ({"ratio": float("nan")}, "finite number"),
        ({"": 1}, "non-empty string"),
        ({f"k{i}": i for i in range(40)}, "at most 32"),
    ],
)
def test_details_must_be_small_flat_metadata(details, says):
    with pytest.raises(AuditRecordInvalid, match=says):
        rec(details=details)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"actor": ""}, "actor must not be empty"),
        ({"actor": "@a:x\n@b:x"}, "control characters"),
        ({"outcome": "ok"}, "outcome 'ok' must be one of denied, failure, success"),
        ({"time": 1_795_000_000_123}, None),  # milliseconds: plausible 1970 date, accepted
        ({"time": 1_795_000_000_123_456_789}, "nanoseconds passed by mistake"),
        ({"time": "2026-11-25"}, "must be an int"),
        ({"room": 5}, "room must be a string"),
    ],
)
def test_field_rules(fields, says):
    if says is None:
        rec(**fields)
        return
    with pytest.raises(AuditRecordInvalid, match=says):
        rec(**fields)


def test_lists_in_details_become_tuples_but_hash_as_lists():
    r = rec(details={"changed": ["name", "topic"]})
    assert r.details["changed"] == ("name", "topic")
    assert r.fields()["details"] == {"changed": ["name", "topic"]}


def test_time_helpers_round_trip_in_utc():
    assert iso_time(T) == "2026-11-18T11:06:40.123456Z"
    assert parse_time("2026-11-18T11:06:40.123456Z") == T
    assert parse_time("2026-11-18T19:06:40.123456+08:00") == T
    assert parse_time("2026-11-18T11:06:40.123456") == T  # no zone: UTC
    with pytest.raises(AuditRecordInvalid, match="ISO 8601"):
        parse_time("yesterday")
