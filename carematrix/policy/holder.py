"""Keeps the policy in force and swaps in edits only when they are valid.

Long-running processes (every Synapse worker, the appservice) poll the policy directory;
a broken edit is reported once and the last good policy stays in force (fail closed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from carematrix.policy.errors import PolicyError, PolicyInvalid
from carematrix.policy.loader import load_policy, policy_fingerprint
from carematrix.policy.model import Policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadOutcome:
    accepted: bool
    digest: str
    errors: tuple[PolicyError, ...] = ()


class PolicyHolder:
    def __init__(
        self,
        directory: Path | str,
        on_outcome: Callable[[ReloadOutcome], None] | None = None,
    ) -> None:
        """Load the initial policy; raises ``PolicyInvalid`` so a process refuses to start
        with no valid policy rather than run unenforced."""
        self.directory = Path(directory)
        self._fingerprint = policy_fingerprint(self.directory)
        self.current: Policy = load_policy(self.directory)
        # Told of every reload attempt; may be set after construction.
        self.on_outcome = on_outcome

    def refresh(self) -> ReloadOutcome | None:
        """Reload if the files changed since the last look; returns what happened, if anything."""
        fingerprint = policy_fingerprint(self.directory)
        if fingerprint == self._fingerprint:
            return None
        self._fingerprint = fingerprint
        try:
            policy = load_policy(self.directory)
        except PolicyInvalid as exc:
            outcome = ReloadOutcome(False, self.current.digest, tuple(exc.errors))
            log.error(
                "Rejected policy edit in %s; keeping policy %s in force:\n%s",
                self.directory,
                self.current.digest[:12],
                exc,
            )
        else:
            changed = policy.digest != self.current.digest
            self.current = policy
            outcome = ReloadOutcome(True, policy.digest)
            if changed:
                log.info("Policy %s now in force (from %s)", policy.digest[:12], self.directory)
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        return outcome
