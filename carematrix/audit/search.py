"""Search the audit log and render the result as a table, JSON, CSV or a FHIR Bundle.

Every filter maps to an indexed column. Searching the audit log is itself auditable: build
the ``audit.query`` record with :func:`query_record` and append it, so "who looked at this
patient's trail" is answered by the same search.
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from carematrix.audit.actions import AUDIT_QUERY, OUTCOMES
from carematrix.audit.chain import canonical_json
from carematrix.audit.record import AuditRecord, iso_time
from carematrix.hsdb.audit_store import COLUMNS, LOG, StoredRecord, check_dialect, row_record, sql

FORMATS: tuple[str, ...] = ("table", "json", "csv", "fhir")
MAX_LIMIT = 100_000


class AuditQueryInvalid(ValueError):
    """A search that cannot run as asked; the message says which filter and why."""


@dataclass(frozen=True, kw_only=True)
class AuditQuery:
    """Filters are ANDed; None means "any". Times are UTC microseconds, ``until`` exclusive.

    ``action`` is exact (``auth.login``) or a prefix ending in ``.`` or ``.*`` (``auth.``).
    """

    actor: str | None = None
    room: str | None = None
    patient: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: int | None = None
    until: int | None = None
    limit: int | None = 100
    newest_first: bool = True

    def __post_init__(self) -> None:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise AuditQueryInvalid(
                f"outcome {self.outcome!r} must be one of {', '.join(sorted(OUTCOMES))}"
            )
        if self.limit is not None and not 1 <= self.limit <= MAX_LIMIT:
            raise AuditQueryInvalid(f"limit must be between 1 and {MAX_LIMIT}, got {self.limit}")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise AuditQueryInvalid(
                f"since ({iso_time(self.since)}) must be before until ({iso_time(self.until)})"
            )
        if self.action is not None and not self.action.strip(".*"):
            raise AuditQueryInvalid(f"action filter {self.action!r} is empty")

    @property
    def action_prefix(self) -> str | None:
        if self.action is None:
            return None
        if self.action.endswith(".*"):
            return self.action[:-1]
        return self.action if self.action.endswith(".") else None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        for column in ("actor", "room", "patient", "outcome"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        prefix = self.action_prefix
        if prefix is not None:
            # A range, not LIKE: case-sensitive, no wildcard escaping, uses the index on both
            # engines (SQLite's BINARY and Synapse's required C collation order bytes alike).
            clauses.append("action >= ? AND action < ?")
            args += [prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)]
        elif self.action is not None:
            clauses.append("action = ?")
            args.append(self.action)
        if self.since is not None:
            clauses.append("recorded_at >= ?")
            args.append(self.since)
        if self.until is not None:
            clauses.append("recorded_at < ?")
            args.append(self.until)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args

    def describe(self) -> dict[str, Any]:
        """The filters that were set, for the ``audit.query`` record's details."""
        out: dict[str, Any] = {}
        for name in ("actor", "action", "outcome"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.since is not None:
            out["since"] = iso_time(self.since)
        if self.until is not None:
            out["until"] = iso_time(self.until)
        if self.limit is not None:
            out["limit"] = self.limit
        return out


def search(txn: Any, dialect: str, query: AuditQuery) -> list[StoredRecord]:
    check_dialect(dialect)
    where, args = query.where()
    order = "DESC" if query.newest_first else "ASC"
    statement = f"SELECT {COLUMNS} FROM {LOG}{where} ORDER BY seq {order}"
    if query.limit is not None:
        statement += " LIMIT ?"
        args.append(query.limit)
    txn.execute(sql(statement, dialect), args)
    return [row_record(r) for r in txn.fetchall()]


def query_record(
    actor: str,
    query: AuditQuery,
    fmt: str,
    results: int,
    process: str = "cli",
    source: str | None = None,
) -> AuditRecord:
    """The ``audit.query`` record for a search: who searched for what, and how much came back.

    Room and patient filters become the record's room and patient, so a search of a
    patient's trail shows up in that patient's trail.
    """
    return AuditRecord(
        actor=actor,
        action=AUDIT_QUERY,
        object="audit",  # as the record of a refused search has it
        room=query.room,
        patient=query.patient,
        process=process,
        source=source,
        details={**query.describe(), "format": fmt, "results": results},
    )


# --- rendering -----------------------------------------------------------------------------

_FIELDS = (
    "seq",
    "time",
    "actor",
    "action",
    "outcome",
    "object",
    "room",
    "patient",
    "rule",
    "source",
    "process",
    "details",
    "hash",
)
_TABLE_FIELDS = ("seq", "time", "actor", "action", "outcome", "object", "room", "patient", "rule")


def as_dict(stored: StoredRecord) -> dict[str, Any]:
    r = stored.record
    return {
        "seq": stored.seq,
        "time": r.iso_time,
        "actor": r.actor,
        "action": r.action,
        "outcome": r.outcome,
        "object": r.object,
        "room": r.room,
        "patient": r.patient,
        "rule": r.rule,
        "source": r.source,
        "process": r.process,
        "details": r.fields()["details"],
        "hash": stored.hash,
    }


def format_json(rows: Sequence[StoredRecord]) -> str:
    return json.dumps([as_dict(s) for s in rows], ensure_ascii=False, indent=2) + "\n"


def format_csv(rows: Sequence[StoredRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_FIELDS)
    for s in rows:
        d = as_dict(s)
        d["details"] = canonical_json(d["details"]).decode("utf-8")
        writer.writerow(["" if d[f] is None else d[f] for f in _FIELDS])
    return out.getvalue()


def _width(text: str) -> int:
    """Terminal columns: CJK names and IDs take two columns per character."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def format_table(rows: Sequence[StoredRecord]) -> str:
    if not rows:
        return "(no matching audit records)\n"
    cells = []
    for s in rows:
        d = as_dict(s)
        line = ["" if d[f] is None else str(d[f]) for f in _TABLE_FIELDS]
        cells.append(line)
    widths = [max(_width(h), *(_width(c[i]) for c in cells)) for i, h in enumerate(_TABLE_FIELDS)]

    def fmt(values: Sequence[str]) -> str:
        padded = [v + " " * (w - _width(v)) for v, w in zip(values, widths, strict=True)]
        return "  ".join(padded).rstrip()

    lines = [fmt(_TABLE_FIELDS), fmt(["-" * w for w in widths])]
    lines += [fmt(c) for c in cells]
    return "\n".join(lines) + "\n"


def render(
    rows: Sequence[StoredRecord],
    fmt: str,
    server_name: str = "localhost",
    bundle_type: str = "searchset",
) -> str:
    """The rows in one of :data:`FORMATS`; FHIR is an R4 Bundle of AuditEvents (JSON)."""
    if fmt == "table":
        return format_table(rows)
    if fmt == "json":
        return format_json(rows)
    if fmt == "csv":
        return format_csv(rows)
    if fmt == "fhir":
        from carematrix.audit.fhir import bundle

        return (
            json.dumps(bundle(rows, server_name, bundle_type), ensure_ascii=False, indent=2) + "\n"
        )
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
