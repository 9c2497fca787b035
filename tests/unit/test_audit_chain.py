"""Canonical encoding and the link hash, checked against the formula written out by hand."""

from __future__ import annotations

import hashlib

import pytest

from carematrix.audit.chain import GENESIS_HASH, canonical, link_hash, record_hash
from carematrix.audit.record import AuditRecord

RECORD = AuditRecord(
    time=1_795_000_000_123_456,
    actor="@n3001:localhost",
    action="media.download",
    object="mxc://localhost/AbCd",
    room="!icu:localhost",
    patient="住院号-0042",
    source="10.0.0.7",
    process="media1",
    details={"size": 52311, "thumb": False, "kinds": ["image/png"]},
)

EXPECTED = (
    '{"action":"media.download","actor":"@n3001:localhost",'
    '"details":{"kinds":["image/png"],"size":52311,"thumb":false},'
    '"object":"mxc://localhost/AbCd","outcome":"success","patient":"住院号-0042",'
    '"process":"media1","room":"!icu:localhost","rule":null,"source":"10.0.0.7",'
    '"time":1795000000123456}'
).encode()


def test_canonical_json_is_sorted_compact_utf8_with_nulls():
    assert canonical(RECORD) == EXPECTED


def test_canonical_form_does_not_depend_on_detail_order():
    a = AuditRecord(actor="@a:x", action="room.state", time=1, details={"x": 1, "a": 2})
    b = AuditRecord(actor="@a:x", action="room.state", time=1, details={"a": 2, "x": 1})
    assert canonical(a) == canonical(b)


def test_link_hash_is_sha256_of_prev_record_and_seq():
    by_hand = hashlib.sha256(bytes(32) + EXPECTED + (1).to_bytes(8, "big")).hexdigest()
    assert record_hash(GENESIS_HASH, RECORD, 1) == by_hand
    second = hashlib.sha256(bytes.fromhex(by_hand) + EXPECTED + (2).to_bytes(8, "big")).hexdigest()
    assert link_hash(by_hand, EXPECTED, 2) == second
    # The worked example in docs/audit.md.
    assert by_hand == "5df34057f7a693e6c23448ad39a938b9bc53d5bd4ca6337e5f8a420fa5a2cf39"


@pytest.mark.parametrize(
    "change",
    [
        {"actor": "@n3002:localhost"},
        {"outcome": "denied"},
        {"patient": None},
        {"time": 1_795_000_000_123_457},
        {"details": {"size": 52312, "thumb": False, "kinds": ["image/png"]}},
    ],
)
def test_any_change_to_a_record_changes_its_hash(change):
    fields = {
        f: getattr(RECORD, f)
        for f in ("time", "actor", "action", "object", "room", "patient", "source", "process")
    }
    fields["details"] = dict(RECORD.details)
    fields.update(change)
    assert record_hash(GENESIS_HASH, AuditRecord(**fields), 1) != record_hash(
        GENESIS_HASH, RECORD, 1
    )


def test_the_same_record_at_another_position_hashes_differently():
    assert record_hash(GENESIS_HASH, RECORD, 1) != record_hash(GENESIS_HASH, RECORD, 2)
    with pytest.raises(ValueError):
        record_hash(GENESIS_HASH, RECORD, 0)
