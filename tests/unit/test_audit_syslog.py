"""RFC 5424 message layout (IHE ATNA style) and RFC 6587 octet-counting frames."""

from __future__ import annotations

import json
import re

from carematrix.audit import actions as A
from carematrix.audit.checkpoint import Checkpoint
from carematrix.audit.record import AuditRecord
from carematrix.hsdb.audit_store import StoredRecord
from synapse_modules.audit_syslog import (
    BOM,
    format_checkpoint,
    format_record,
    octet_frame,
    read_frames,
    structured_data,
)

T = 1_795_000_000_123_456
# RFC 5424: <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD [SP MSG]
HEADER = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) "
    rb"(?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) (?P<sd>\[.*?[^\\]\])+ (?P<msg>.*)$",
    re.S,
)


def stored(**kw) -> StoredRecord:
    fields = {
        "actor": "@d1001:localhost",
        "action": A.MESSAGE_SEND,
        "object": "$e1:localhost",
        "time": T,
    }
    fields.update(kw)
    return StoredRecord(42, AuditRecord(**fields), "a" * 64, "b" * 64)


def test_record_message_has_the_atna_header_and_fhir_body():
    m = HEADER.match(
        format_record(stored(process="worker1"), "hs1.hospital.example", "hospital.example")
    )
    assert m, "not RFC 5424"
    assert m["pri"] == b"85"  # facility 10 (security/authorization) * 8 + severity 5 (notice)
    assert m["ts"] == b"2026-11-18T11:06:40.123456Z"
    assert (m["host"], m["app"], m["procid"], m["msgid"]) == (
        b"hs1.hospital.example",
        b"carematrix",
        b"worker1",
        b"message.send",
    )
    assert m["sd"].startswith(b'[carematrix@32473 seq="42" hash="' + b"b" * 64)
    assert m["msg"].startswith(BOM)
    event = json.loads(m["msg"][len(BOM) :])
    assert event["resourceType"] == "AuditEvent" and event["id"] == "audit-42"


def test_refusals_are_warnings_and_compact_json_payload_works():
    raw = format_record(
        stored(action=A.POLICY_DENIED, outcome=A.DENIED, rule="room_class.post"),
        "hs1",
        "hospital.example",
        payload="json",
    )
    m = HEADER.match(raw)
    assert m["pri"] == b"84"
    body = json.loads(m["msg"][len(BOM) :])
    assert body["rule"] == "room_class.post" and body["seq"] == 42


def test_structured_data_values_are_escaped():
    assert structured_data("x@1", [("a", 'q"b\\c]d'), ("skip", None)]) == '[x@1 a="q\\"b\\\\c\\]d"]'


def test_header_fields_are_printable_ascii_or_nil():
    m = HEADER.match(format_record(stored(process="医院 main"), "", "h"))
    assert m["host"] == b"-"
    assert m["procid"] == b"___main"


def test_octet_counting_frames_split_back_exactly_even_with_newlines():
    messages = [b"one", "二\nline two".encode(), b"", b"x" * 5000]
    stream = b"".join(octet_frame(m) for m in messages)
    assert octet_frame(b"abc") == b"3 abc"
    got, rest = read_frames(stream)
    assert got == messages and rest == b""
    got, rest = read_frames(stream[:-10])
    assert got == messages[:3]
    assert rest == octet_frame(messages[3])[:-10]  # the incomplete frame waits for more bytes


def test_checkpoint_message():
    cp = Checkpoint(1200, "c" * 64, T, "ed25519:audit_1", "sig")
    m = HEADER.match(format_checkpoint(cp, "hs1"))
    assert m["msgid"] == b"audit.checkpoint"
    assert Checkpoint.from_json(json.loads(m["msg"][len(BOM) :])) == cp
