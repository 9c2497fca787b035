"""Runs org sync inside the appservice: on request (``carematrix org sync``) and whenever
the policy changes. Remembers which accounts it manages, so it deactivates only staff who
left the org, never service or admin accounts."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from mautrix.util.async_db import Database

from appservice.audit_client import AuditClient
from appservice.db import transaction
from appservice.homeserver import Homeserver, HomeserverUnreachable, MatrixCallFailed
from appservice.org_matrix import OrgMatrix
from carematrix.gc_pause import without_automatic_gc
from carematrix.org.plan import desired_state, plan
from carematrix.policy.holder import PolicyHolder

log = logging.getLogger("carematrix.appservice.org")

@dataclass
class SyncReport:
    policy_digest: str
    dry_run: bool
    actions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {
            "policy_digest": self.policy_digest,
            "dry_run": self.dry_run,
            "actions": self.actions,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "phase_seconds": self.phase_seconds,
        }


class OrgSyncService:
    def __init__(
        self,
        db: Database,
        policy: PolicyHolder,
        homeserver: Homeserver,
        bot_user_id: str,
        initial_password: str | None,
        audit: AuditClient | None = None,
    ) -> None:
        self.db = db
        self.policy = policy
        self.homeserver = homeserver
        self.bot_user_id = bot_user_id
        self.initial_password = initial_password
        self.audit = audit
        self._lock = asyncio.Lock()
        self.last_report: SyncReport | None = None

    async def managed(self) -> set[str]:
        rows = await self.db.fetch("SELECT localpart FROM carematrix_org_account")
        return {r["localpart"] for r in rows}

    async def _remember(self, localparts: set[str]) -> None:
        """One transaction for the accounts not yet on record (none, once synced): a commit
        per account made every sync of 5,000 staff queue the HIS's messages behind it."""
        if not localparts:
            return
        now = int(time.time() * 1000)
        async with transaction(self.db) as conn:
            await conn.executemany(
                "INSERT INTO carematrix_org_account (localpart, first_synced_at) VALUES ($1, $2) "
                "ON CONFLICT (localpart) DO NOTHING",
                [(localpart, now) for localpart in sorted(localparts)],
            )

    async def run(self, dry_run: bool = False) -> SyncReport:
        """One whole sync against the policy in force (already validated as a whole)."""
        async with self._lock:
            started = time.monotonic()
            policy = self.policy.current
            report = SyncReport(policy.digest, dry_run)
            # Working out the org's rooms and members, and the plan, takes most of a second
            # for 5,000 staff: done in a thread so the loop (MLLP ACKs, escalations) runs on
            # (carematrix.gc_pause says why collection waits meanwhile).
            desired = await asyncio.to_thread(without_automatic_gc, desired_state, policy)
            matrix = OrgMatrix(self.homeserver, self.bot_user_id)
            try:
                observed = await matrix.observe(desired, await self.managed())
            except (MatrixCallFailed, HomeserverUnreachable) as exc:
                report.errors.append(f"cannot read the homeserver's current state: {exc}")
                self.last_report = report
                return report
            actions = await asyncio.to_thread(without_automatic_gc, plan, desired, observed)
            report.actions = [a.describe() for a in actions]
            if not dry_run:
                # Remember first: an account created by a sync that then fails half-way
                # must still be recognised as ours next time.
                await self._remember(set(desired.accounts) - observed.managed)
                report.errors = await matrix.apply(actions, self.initial_password)
                report.phase_seconds = matrix.phase_seconds
            report.seconds = time.monotonic() - started
            if not dry_run:
                log.info(
                    "org sync: %d actions, %d errors, %.1fs %s (policy %s)",
                    len(actions), len(report.errors), report.seconds, report.phase_seconds, policy.digest[:12],
                )
                for error in report.errors:
                    log.error("org sync: %s", error)
                if self.audit is not None and actions:
                    kinds: dict[str, int] = {}
                    for a in actions:
                        kinds[a.kind] = kinds.get(a.kind, 0) + 1
                    await self.audit.record(
                        actor=self.bot_user_id, action="org.sync", object=policy.digest[:64],
                        outcome="success" if not report.errors else "failure",
                        details={**kinds, "errors": len(report.errors)},
                    )
            self.last_report = report
            return report
