"""One audit record: who did what to which object, when, with what outcome.

A record is checked when it is made, not when it is written, so a caller that builds a bad
record fails at the line that built it. The audit log must never become a second copy of
the clinical data it protects: ``details`` carries metadata only, and anything that looks
like message text or file content is refused with a :class:`AuditRecordInvalid`.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from carematrix.audit.actions import OUTCOMES, SUCCESS, action_problem

# Keys that carry message text or file content in Matrix events (m.room.message and
# friends); a details dict holding one of them is refused, whatever its value.
FORBIDDEN_DETAIL_KEYS: frozenset[str] = frozenset(
    {"body", "content", "formatted_body", "text", "caption", "html", "data"}
)
MAX_DETAIL_VALUE_CHARS = 512
MAX_DETAIL_KEYS = 32
MAX_DETAIL_KEY_CHARS = 64
MAX_DETAIL_LIST_ITEMS = 32
MAX_FIELD_CHARS = 512
# Year 1970 .. 9999 in microseconds: anything else is a unit mistake (ms, ns, seconds).
MAX_TIME_US = 253402300799999999

Scalar = str | int | float | bool | None


class AuditRecordInvalid(ValueError):
    """A record that must not be written; the message names the field and the rule."""


def now_us() -> int:
    """Current UTC time in microseconds since the epoch (the record's time unit)."""
    return _time.time_ns() // 1000


def iso_time(time_us: int) -> str:
    """``2026-11-25T10:00:00.123456Z``: always six fraction digits, always UTC."""
    seconds, micros = divmod(time_us, 1_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{micros:06d}Z"


def parse_time(value: str | int | datetime) -> int:
    """Microseconds since the epoch from an ISO 8601 string, a datetime or an int.

    A string or datetime without a zone is read as UTC, like every time in the log.
    """
    if isinstance(value, bool):
        raise AuditRecordInvalid(f"time {value!r} is not a time")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError as exc:
            raise AuditRecordInvalid(
                f"time {value!r} is not ISO 8601 (like 2026-11-25T10:00:00Z)"
            ) from exc
    if not isinstance(value, datetime):
        raise AuditRecordInvalid(f"time {value!r} is not a time")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _check_text(name: str, value: object, required: bool, limit: int = MAX_FIELD_CHARS) -> None:
    if value is None:
        if required:
            raise AuditRecordInvalid(f"{name} is required")
        return
    if not isinstance(value, str):
        raise AuditRecordInvalid(f"{name} must be a string, got {type(value).__name__}")
    if required and not value:
        raise AuditRecordInvalid(f"{name} must not be empty")
    if len(value) > limit:
        raise AuditRecordInvalid(f"{name} is {len(value)} characters; at most {limit} allowed")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise AuditRecordInvalid(f"{name} {value[:40]!r} contains control characters")
    _check_encodable(name, value)


def _check_encodable(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AuditRecordInvalid(f"{name} is not valid Unicode text") from exc
    if "\x00" in value:
        raise AuditRecordInvalid(f"{name} contains a NUL character")


def _check_scalar(where: str, value: object) -> Scalar:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditRecordInvalid(f"{where} must be a finite number, got {value!r}")
        return value
    if isinstance(value, str):
        if len(value) > MAX_DETAIL_VALUE_CHARS:
            raise AuditRecordInvalid(
                f"{where} is {len(value)} characters; detail values are limited to "
                f"{MAX_DETAIL_VALUE_CHARS} so that no message text or file content can be "
                "stored in the audit log"
            )
        _check_encodable(where, value)
        return value
    raise AuditRecordInvalid(
        f"{where} has type {type(value).__name__}; detail values must be strings, numbers, "
        "booleans, null, or lists of those"
    )


def check_details(details: Mapping[str, Any]) -> dict[str, Any]:
    """A validated copy of ``details`` (lists become tuples), or :class:`AuditRecordInvalid`."""
    if not isinstance(details, Mapping):
        raise AuditRecordInvalid(f"details must be a mapping, got {type(details).__name__}")
    if len(details) > MAX_DETAIL_KEYS:
        raise AuditRecordInvalid(f"details has {len(details)} keys; at most {MAX_DETAIL_KEYS}")
    clean: dict[str, Any] = {}
    for key, value in details.items():
        if not isinstance(key, str) or not key or len(key) > MAX_DETAIL_KEY_CHARS:
            raise AuditRecordInvalid(
                f"details key {key!r} must be a non-empty string of at most "
                f"{MAX_DETAIL_KEY_CHARS} characters"
            )
        _check_encodable(f"details key {key!r}", key)
        if key.lower() in FORBIDDEN_DETAIL_KEYS:
            raise AuditRecordInvalid(
                f"details key {key!r} is refused: the audit log records metadata only, never "
                "message text or file content (refused keys: "
                f"{', '.join(sorted(FORBIDDEN_DETAIL_KEYS))})"
            )
        where = f"details[{key!r}]"
        if isinstance(value, list | tuple):
            if len(value) > MAX_DETAIL_LIST_ITEMS:
                raise AuditRecordInvalid(
                    f"{where} has {len(value)} items; at most {MAX_DETAIL_LIST_ITEMS}"
                )
            clean[key] = tuple(_check_scalar(f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, Mapping):
            raise AuditRecordInvalid(
                f"{where} is a nested object; details must be flat (key: value) metadata"
            )
        else:
            clean[key] = _check_scalar(where, value)
    return clean


@dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """One auditable event. Keyword-only: eleven fields are too many to pass by position.

    ``time`` is UTC microseconds since the epoch (exact, sortable, no zone ambiguity); use
    :func:`iso_time` to show it. ``object`` is what was acted on (event ID, room ID, media
    ID, user ID); ``room`` and ``patient`` are set when the event concerns one, so an
    auditor can ask "everything about this patient" without reading any message.
    """

    actor: str
    action: str
    object: str | None = None
    outcome: str = SUCCESS
    room: str | None = None
    patient: str | None = None
    source: str | None = None
    process: str = "main"
    rule: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict, hash=False)
    time: int = field(default_factory=now_us)

    def __post_init__(self) -> None:
        if isinstance(self.time, bool) or not isinstance(self.time, int):
            raise AuditRecordInvalid(
                f"time must be an int (UTC microseconds since the epoch), got {self.time!r}"
            )
        if not 0 <= self.time <= MAX_TIME_US:
            raise AuditRecordInvalid(
                f"time {self.time} is outside 1970..9999 in microseconds (milliseconds or "
                "nanoseconds passed by mistake?)"
            )
        _check_text("actor", self.actor, required=True)
        problem = action_problem(self.action)
        if problem:
            raise AuditRecordInvalid(problem)
        if self.outcome not in OUTCOMES:
            raise AuditRecordInvalid(
                f"outcome {self.outcome!r} must be one of {', '.join(sorted(OUTCOMES))}"
            )
        _check_text("process", self.process, required=True, limit=128)
        for name in ("object", "room", "patient", "source", "rule"):
            _check_text(name, getattr(self, name), required=False)
        object.__setattr__(self, "details", MappingProxyType(check_details(self.details)))

    @property
    def iso_time(self) -> str:
        return iso_time(self.time)

    def fields(self) -> dict[str, Any]:
        """The record as plain data (details as a dict, lists as lists): what gets hashed."""
        return {
            "action": self.action,
            "actor": self.actor,
            "details": {k: list(v) if isinstance(v, tuple) else v for k, v in self.details.items()},
            "object": self.object,
            "outcome": self.outcome,
            "patient": self.patient,
            "process": self.process,
            "room": self.room,
            "rule": self.rule,
            "source": self.source,
            "time": self.time,
        }
