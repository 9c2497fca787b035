"""Recompute the chain row by row and say, in a sentence, where and how it breaks.

Shared by :mod:`carematrix.audit.verify` (the whole log) and
:mod:`carematrix.audit.checkpoint` (the stretch since the last checkpoint, before signing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from carematrix.audit.chain import GENESIS_HASH, canonical, link_hash
from carematrix.hsdb.audit_store import row_fields


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    problem: str


class ChainWalker:
    """Feed rows in seq order; the first row that does not fit yields a :class:`ChainBreak`.

    ``last_seq`` / ``last_hash`` are the last record that did fit, so a caller can continue a
    walk from a trusted point (a checkpoint) instead of from the first record.
    """

    def __init__(self, after_seq: int = 0, after_hash: str = GENESIS_HASH) -> None:
        self.last_seq = after_seq
        self.last_hash = after_hash
        self.count = 0

    def feed(self, row: Sequence[Any]) -> ChainBreak | None:
        seq = int(row[0])
        expected = self.last_seq + 1
        if seq != expected:
            if seq == expected + 1:
                return ChainBreak(expected, f"record {expected} is missing (deleted?)")
            return ChainBreak(expected, f"records {expected}-{seq - 1} are missing (deleted?)")
        prev_hash, stored_hash = row[12], row[13]
        if prev_hash != self.last_hash:
            before = f"record {seq - 1}'s hash" if seq > 1 else "the genesis hash"
            return ChainBreak(
                seq,
                f"record {seq}: its prev_hash is not {before} "
                f"(record {seq - 1} rewritten, or this link edited?)",
            )
        try:
            encoded = canonical(row_fields(row))
        except (ValueError, TypeError):
            return ChainBreak(seq, f"record {seq}: details are not valid JSON (edited?)")
        if link_hash(prev_hash, encoded, seq) != stored_hash:
            return ChainBreak(seq, f"record {seq}: hash does not match its content (edited?)")
        self.last_seq = seq
        self.last_hash = stored_hash
        self.count += 1
        return None
