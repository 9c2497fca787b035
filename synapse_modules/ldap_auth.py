"""Synapse module: staff sign in with their hospital directory (LDAP) password.

Registered as ``synapse_modules.ldap_auth.CareMatrixLdapAuth`` in homeserver.yaml (see
docs/org.md). It answers ``m.login.password`` for people on the staff list by binding to
the directory as their entry, and for the tooling admin account (``carematrix up`` and the
CLI sign in as it) by a hash of its generated password. With ``local_passwords: false`` the
deployment switches Synapse's own password database off (``password_config.localdb_enabled``),
so these two are the only ways in: a password set in Synapse (the demo password, an admin
reset) opens nothing.

Synapse itself refuses deactivated and locked accounts after this checker has accepted the
password (``LoginRestServlet._complete_login``), so org sync's deactivation of leavers holds
(behaviour relied on: listed and guarded in synapse_modules/adapter).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synapse.module_api import ModuleApi
from synapse.module_api.errors import ConfigError

from carematrix import identity
from carematrix.ldap_login import (
    LdapConfig,
    LdapConfigError,
    parse_ldap_config,
    staff_number_for_login,
)
from carematrix.policy.org import staff_localpart
from synapse_modules import policy_source
from synapse_modules.config import checked_keys_and_policy_dir
from synapse_modules.ldap_directory import check_password as directory_check_password

log = logging.getLogger(__name__)

PASSWORD_LOGIN = "m.login.password"
USER_ID_RE = re.compile(r"^@[a-z0-9._=/+-]+:[A-Za-z0-9.:\[\]-]+$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
POLICY_RELOAD_MS = 2000


@dataclass(frozen=True)
class LdapAuthConfig:
    policy_dir: Path
    ldap: LdapConfig
    # The tooling account and the SHA-256 of its generated password (a 256-bit random
    # secret, so a fast hash is enough); None: no such account.
    admin_user_id: str | None = None
    admin_password_sha256: str | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LdapAuthConfig:
        """Raises ValueError naming the bad key; the caller turns it into ConfigError."""
        policy_dir = checked_keys_and_policy_dir(config, {"policy_dir", "ldap", "admin_user_id", "admin_password_sha256"})
        policy_source.load_at_config(policy_dir)
        if "ldap" not in config:
            raise ValueError("'ldap' is required: the directory settings (docs/org.md)")
        try:
            ldap = parse_ldap_config(config["ldap"])
        except LdapConfigError as exc:
            raise ValueError(f"'ldap': {exc}") from exc
        admin = config.get("admin_user_id")
        digest = config.get("admin_password_sha256")
        if (admin is None) != (digest is None):
            raise ValueError("'admin_user_id' and 'admin_password_sha256' go together: set both or neither")
        if admin is not None and (not isinstance(admin, str) or not USER_ID_RE.match(admin)):
            raise ValueError(f"'admin_user_id' must be a Matrix user ID like @carematrix-admin:example.org, got {admin!r}")
        if digest is not None and (not isinstance(digest, str) or not SHA256_RE.match(digest)):
            raise ValueError("'admin_password_sha256' must be 64 lower-case hex digits (SHA-256)")
        return cls(Path(policy_dir), ldap, admin, digest)


def password_sha256(password: str) -> str:
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CareMatrixLdapAuth:
    def __init__(self, config: LdapAuthConfig, api: ModuleApi) -> None:
        self._config = config
        self._api = api
        # Leavers are refused as soon as the staff list drops them, before org sync runs.
        self._holder = policy_source.keep_fresh(api, config.policy_dir, POLICY_RELOAD_MS)
        api.register_password_auth_provider_callbacks(
            auth_checkers={(PASSWORD_LOGIN, ("password",)): self.check_password}
        )
        ldap = config.ldap
        if not ldap.uses_tls and not _is_loopback(ldap.host):
            log.warning(
                "LDAP sign-in: %s is plain ldap:// without start_tls, so staff passwords cross "
                "the network unencrypted; use ldaps:// or start_tls: true", ldap.uri,
            )
        log.info(
            "LDAP sign-in via %s (base %s, attribute %s); Synapse's own passwords %s",
            ldap.uri, ldap.base_dn, ldap.staff_number_attribute,
            "also accepted" if ldap.local_passwords else "not accepted",
        )

    @staticmethod
    def parse_config(config: dict[str, Any]) -> LdapAuthConfig:
        try:
            return LdapAuthConfig.from_config(config)
        except ValueError as exc:
            raise ConfigError(f"CareMatrix LDAP sign-in module: {exc}") from exc

    async def check_password(
        self, username: str, login_type: str, login_dict: dict[str, Any]
    ) -> tuple[str, None] | None:
        """Synapse's auth checker: ``(user_id, None)`` to sign the person in, None to refuse
        (Synapse then answers 403 M_FORBIDDEN, or tries its own database if that is on)."""
        try:
            return await self._check(username, login_dict.get("password"))
        except Exception:
            # Synapse would log and skip a failing checker; refusing here keeps it closed.
            log.exception("LDAP sign-in for %r failed unexpectedly; refusing", _shown(username))
            return None

    async def _check(self, username: str, password: Any) -> tuple[str, None] | None:
        if not isinstance(password, str) or not password:
            return self._refuse(username, "empty password")
        admin = self._admin_login(username)
        if admin is not None:
            return await self._check_admin(admin, password)
        server = self._api.server_name
        staff_number = staff_number_for_login(username, self._holder.current, server)
        if staff_number is None:
            return self._refuse(username, "not on the staff list (the directory is not asked)")
        user_id = await self._api.check_user_exists(identity.user_id(staff_localpart(staff_number), server))
        if user_id is None:
            return self._refuse(username, f"{staff_number} has no account yet (org sync creates it)")
        verdict = await self._api.defer_to_thread(
            directory_check_password, self._config.ldap, staff_number, password
        )
        if not verdict.accepted:
            if verdict.unavailable:
                log.error("LDAP sign-in for %s refused, directory problem: %s", user_id, verdict.reason)
                return None
            return self._refuse(username, f"{verdict.reason} (entry {verdict.dn or 'none'})")
        log.info("LDAP sign-in for %s accepted (entry %s)", user_id, verdict.dn)
        return user_id, None

    def _admin_login(self, username: str) -> str | None:
        """The admin user ID if ``username`` names the tooling account."""
        admin = self._config.admin_user_id
        if admin is None:
            return None
        typed = username if username.startswith("@") else identity.user_id(username, self._api.server_name)
        return admin if typed.lower() == admin.lower() else None

    async def _check_admin(self, admin: str, password: str) -> tuple[str, None] | None:
        expected = self._config.admin_password_sha256 or ""
        if not hmac.compare_digest(password_sha256(password), expected):
            return self._refuse(admin, "wrong password for the tooling account")
        user_id = await self._api.check_user_exists(admin)
        if user_id is None:
            return self._refuse(admin, "the tooling account does not exist yet")
        log.info("sign-in for the tooling account %s accepted", user_id)
        return user_id, None

    @staticmethod
    def _refuse(username: str, reason: str) -> None:
        log.warning("LDAP sign-in refused for %r: %s", _shown(username), reason)
        return None


def _shown(username: str) -> str:
    """What a client typed, cut short: it is untrusted text going into the log."""
    return username if len(username) <= 80 else username[:80] + "..."
