"""The hash chain: a deterministic encoding of each record, linked to the one before it.

``hash(n) = SHA-256(prev_hash(n) || canonical(record n) || seq(n))`` where ``prev_hash``
is the previous record's hash as 32 raw bytes (32 zero bytes before the first record),
``canonical`` is the record's canonical JSON and ``seq`` is an unsigned 64-bit big-endian
integer. Every part has a fixed length or a self-delimiting form, so no two different
(prev, record, seq) triples can be concatenated into the same bytes. Changing any field
of any record, or its position, changes every hash from there on.

Canonical JSON: UTF-8, object keys sorted, no whitespace, non-ASCII characters as
themselves (not ``\\u`` escapes), absent optional fields as ``null``, time as an integer
(UTC microseconds). An independent implementation can reproduce it with any JSON library
that sorts keys; docs/audit.md has a worked example.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from carematrix.audit.record import AuditRecord

GENESIS_HASH = "0" * 64
_SEQ_BYTES = 8


def canonical_json(value: Any) -> bytes:
    """Canonical JSON bytes of any JSON value (also used for details and signatures)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def canonical(record: AuditRecord | Mapping[str, Any]) -> bytes:
    """The bytes that are hashed for one record (see the module docstring)."""
    fields = record.fields() if isinstance(record, AuditRecord) else record
    return canonical_json(fields)


def link_hash(prev_hash: str, encoded: bytes, seq: int) -> str:
    """Hex SHA-256 of one link: previous hash, canonical record, sequence number."""
    if seq < 1:
        raise ValueError(f"seq starts at 1, got {seq}")
    h = hashlib.sha256(bytes.fromhex(prev_hash))
    h.update(encoded)
    h.update(seq.to_bytes(_SEQ_BYTES, "big"))
    return h.hexdigest()


def record_hash(prev_hash: str, record: AuditRecord, seq: int) -> str:
    return link_hash(prev_hash, canonical(record), seq)
