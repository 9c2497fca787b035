"""Synapse OIDC user mapping provider: staff sign in with the hospital's single sign-on.

Registered as ``synapse_modules.sso_mapping.CareMatrixSsoMapping`` under
``oidc_providers[].user_mapping_provider.module`` (``carematrix up --oidc-config``, see
docs/org.md). The identity provider vouches for who the person is; the staff list, as with
LDAP, decides whether they get in and which account is theirs: the staff number in the
``staff_number_claim`` picks the org-sync-created account (``allow_existing_users``), and
someone the hospital's IdP knows but the staff list does not is refused.

Synapse skips ``map_user_attributes`` once the IdP subject is linked to an account, but
always calls ``get_extra_attributes`` before completing a login, so the staff-list check
runs there too: a leaver stays refused even after an earlier SSO sign-in linked them
(behaviour relied on: listed and guarded in synapse_modules/adapter).

The staff list is the process's one policy (``policy_source``), kept fresh by the policy
module's poll in the same process, which parses edits off the reactor.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synapse.module_api.errors import ConfigError

from carematrix.policy.holder import run_here
from carematrix.policy.model import Policy
from carematrix.policy.org import Staff, staff_localpart
from synapse_modules import policy_source
from synapse_modules.adapter.sso import MappingException, keep_logging_context_in_userinfo_fetch
from synapse_modules.config import checked_keys_and_policy_dir

log = logging.getLogger(__name__)

DEFAULT_STAFF_NUMBER_CLAIM = "employee_number"
# Staff-list edits (a leaver removed) take effect within this long without a restart.
POLICY_RELOAD_SECONDS = 2.0


@dataclass(frozen=True)
class SsoMappingConfig:
    policy_dir: Path
    staff_number_claim: str = DEFAULT_STAFF_NUMBER_CLAIM

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SsoMappingConfig:
        """Raises ValueError naming the bad key; the caller turns it into ConfigError."""
        policy_dir = checked_keys_and_policy_dir(config, {"policy_dir", "staff_number_claim"})
        claim = config.get("staff_number_claim", DEFAULT_STAFF_NUMBER_CLAIM)
        if not isinstance(claim, str) or not claim.strip():
            raise ValueError(
                f"'staff_number_claim' must be the name of the IdP claim holding the staff number, got {claim!r}"
            )
        policy_source.load_at_config(policy_dir)
        return cls(Path(policy_dir), claim.strip())


def staff_for_claims(userinfo: Any, claim: str, policy: Policy) -> Staff:
    """The person on the staff list the IdP's claims name; raises ``MappingException`` with
    a message the person sees on Synapse's error page otherwise."""
    raw = userinfo.get(claim) if hasattr(userinfo, "get") else None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not raw.strip():
        raise MappingException(
            f"The hospital sign-in did not say who you are (no '{claim}' staff number); "
            "ask IT to release that claim to this service"
        )
    number = raw.strip()
    staff = policy.staff_for_localpart(staff_localpart(number))
    if staff is None:
        raise MappingException(f"Staff number {number[:40]} is not on this hospital's staff list")
    return staff


def subject(userinfo: Any) -> str:
    """The IdP's stable subject (``sub``): what Synapse links to the account."""
    sub = userinfo.get("sub") if hasattr(userinfo, "get") else None
    if isinstance(sub, int) and not isinstance(sub, bool):
        sub = str(sub)
    if not isinstance(sub, str) or not sub:
        raise MappingException("The hospital sign-in returned no subject ('sub' claim)")
    return sub


class CareMatrixSsoMapping:
    """The interface of ``synapse.handlers.oidc.OidcMappingProvider`` (duck-typed, as Synapse
    loads it by name)."""

    def __init__(self, config: SsoMappingConfig) -> None:
        self._config = config
        self._holder = policy_source.policy_holder(config.policy_dir)
        self._checked_at = time.monotonic()
        # Synapse's own userinfo fetch loses the request's logging context (adapter place 29).
        keep_logging_context_in_userinfo_fetch()
        log.info(
            "Hospital SSO sign-in: staff number from the '%s' claim, staff list in %s",
            config.staff_number_claim, config.policy_dir,
        )

    @staticmethod
    def parse_config(config: dict[str, Any]) -> SsoMappingConfig:
        try:
            return SsoMappingConfig.from_config(config)
        except ValueError as exc:
            raise ConfigError(f"CareMatrix SSO mapping: {exc}") from exc

    async def _policy(self) -> Policy:
        # Only if no module of this process polls the policy (the policy module always does
        # in a CareMatrix deployment): refresh on use, at most so often, so a leaver is
        # still refused. There is no module API here to hand the parse to a thread.
        now = time.monotonic()
        if not policy_source.polled(self._config.policy_dir) and now - self._checked_at >= POLICY_RELOAD_SECONDS:
            self._checked_at = now
            await self._holder.refresh(run_here)
        return self._holder.current

    def get_remote_user_id(self, userinfo: Any) -> str:
        return subject(userinfo)

    async def map_user_attributes(self, userinfo: Any, token: Any, failures: int) -> dict[str, Any]:
        """Only ever the one account the staff number names: with ``failures`` (that
        localpart taken by someone else) there is no other name to try."""
        policy = await self._policy()
        staff = staff_for_claims(userinfo, self._config.staff_number_claim, policy)
        if failures:
            raise MappingException(f"Staff number {staff.staff_number} has no account to sign in to")
        return {
            "localpart": staff_localpart(staff.staff_number),
            "display_name": policy.display_name(staff),
            "emails": [],
            "picture": None,
            "confirm_localpart": False,
        }

    async def get_extra_attributes(self, userinfo: Any, token: Any) -> dict[str, Any]:
        """Runs on every SSO login, also for an IdP subject already linked to an account:
        the staff-list check that keeps leavers out."""
        staff = staff_for_claims(userinfo, self._config.staff_number_claim, await self._policy())
        log.info("Hospital SSO sign-in for staff number %s (subject %s)", staff.staff_number, subject(userinfo))
        return {}
