"""Policy errors carry file and line so an admin can go straight to the mistake."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class PolicyError:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class PolicyInvalid(Exception):
    """Raised when a policy directory cannot become the policy in force."""

    def __init__(self, errors: list[PolicyError]) -> None:
        self.errors = sorted(errors)
        super().__init__("\n".join(str(e) for e in self.errors))
