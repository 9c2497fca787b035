"""Refusals as FHIR OperationOutcomes: the sender's interface engine shows each issue with
the element it concerns, so the analyst on the hospital side can fix the mapping without our
logs.

HTTP statuses follow the FHIR RESTful API's convention, and every raiser in this package uses
them the same way:

- 400: the body cannot be read as FHIR (bad JSON, not UTF-8, wrong JSON types, unknown
  elements, malformed dates, a malformed notification Bundle);
- 403: the source may not send this resource type;
- 422: well-formed FHIR that we cannot process: an unsupported resource type, or an element
  that routing depends on (the patient, the status, the ward of an admission) is missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BAD_REQUEST",
    "FORBIDDEN",
    "UNPROCESSABLE",
    "FhirInvalid",
    "Issue",
    "ok_outcome",
    "operation_outcome",
]

BAD_REQUEST = 400
FORBIDDEN = 403
UNPROCESSABLE = 422

SEVERITIES = frozenset({"fatal", "error", "warning", "information"})
# The R4 IssueType value set (http://hl7.org/fhir/issue-type), so a typo in our own code fails
# here rather than as an OperationOutcome the sender's engine refuses to display.
ISSUE_TYPES = frozenset({
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown",
    "expired", "forbidden", "suppressed", "processing", "not-supported", "duplicate",
    "multiple-matches", "not-found", "deleted", "too-long", "code-invalid", "extension",
    "too-costly", "business-rule", "conflict", "transient", "lock-error", "no-store",
    "exception", "timeout", "incomplete", "throttled", "informational",
})


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue. ``expression`` is a FHIRPath-like location such as
    ``Observation.status`` or ``Bundle.entry[2].resource.subject``; empty when the problem
    has no element (the body is not JSON)."""

    severity: str
    code: str
    diagnostics: str
    expression: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"{self.severity!r} is not an OperationOutcome issue severity")
        if self.code not in ISSUE_TYPES:
            raise ValueError(f"{self.code!r} is not a FHIR issue type code")


class FhirInvalid(Exception):
    """Raised instead of returning partial data, carrying every issue found so the sender
    can fix them all in one round trip, and the HTTP status to answer with."""

    def __init__(self, issues: Iterable[Issue], status: int = BAD_REQUEST) -> None:
        self.issues: list[Issue] = list(issues)
        self.status = status
        super().__init__(self.issues, status)

    def __str__(self) -> str:
        return "; ".join(
            f"{issue.expression}: {issue.diagnostics}" if issue.expression else issue.diagnostics
            for issue in self.issues
        ) or f"invalid FHIR input (HTTP {self.status})"

    def outcome(self) -> dict:
        return operation_outcome(self.issues)


def operation_outcome(issues: list[Issue]) -> dict:
    """R4 requires at least one issue, and forbids empty strings, so empty diagnostics and
    expressions are left out rather than sent as ``""``."""
    if not issues:
        raise ValueError("an OperationOutcome needs at least one issue")
    rendered = []
    for issue in issues:
        entry: dict = {"severity": issue.severity, "code": issue.code}
        if issue.diagnostics:
            entry["diagnostics"] = issue.diagnostics
        if issue.expression:
            entry["expression"] = [issue.expression]
        rendered.append(entry)
    return {"resourceType": "OperationOutcome", "issue": rendered}


def ok_outcome(text: str) -> dict:
    return operation_outcome([Issue("information", "informational", text)])
