"""The outcome of a policy decision."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    # Rule ID an auditor can trace back to the policy (empty when allowed by default).
    rule: str = ""
    # Sentence a clinician can read in their client.
    reason: str = ""

    def message(self) -> str:
        return f"{self.reason} [rule {self.rule}]" if self.rule else self.reason


ALLOW = Verdict(True)
