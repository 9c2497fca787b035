"""The Synapse modules a deployment loads, with their configuration."""

from __future__ import annotations

import hashlib
from typing import Any

from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.settings import Paths, Settings, media_store


def synapse_module_configs(
    settings: Settings,
    paths: Paths,
    bot_user_id: str,
    as_token: str,
    watermark_key: str,
    admin_user_id: str = "",
    admin_password: str = "",
    turn_probe: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The Synapse modules, audit first: the policy module records through its writer."""
    if not settings.carematrix_enabled:
        return []
    audit: dict[str, Any] = {
        "module": "synapse_modules.audit_module.CareMatrixAudit",
        "config": {
            "database": settings.database,
            "policy_dir": str(settings.policy_dir),
            "signing_key_path": str(paths.audit_signing_key),
            "verify_key_path": str(paths.audit_verify_key),
            "appservice_token": as_token,
            "checkpoint_interval_seconds": settings.audit_checkpoint_seconds,
        },
    }
    if settings.audit_syslog:
        host, _, port = settings.audit_syslog.rpartition(":")
        if not host or not port.isdigit():
            raise DeployError(f"--audit-syslog must be host:port, got {settings.audit_syslog!r}")
        audit["config"]["syslog"] = {"host": host, "port": int(port), "spool": str(paths.audit_spool)}
    policy = {
        "module": "synapse_modules.policy_module.CareMatrixPolicy",
        "config": {
            "policy_dir": str(settings.policy_dir),
            "bot_user_id": bot_user_id,
            "reload_interval_seconds": 1,
            "watermark_key": watermark_key,
            "watermark_cache_dir": str(paths.watermark_cache),
            "media_store_path": str(media_store(settings, paths)),
        },
    }
    modules = [audit, policy] if settings.audit_enabled else [policy]
    if settings.audit_enabled:
        # The operations console (docs/console.md): signs staff in through this homeserver's
        # /login and reads the on-call board and alerts from the appservice with its token.
        modules.append({
            "module": "synapse_modules.console_module.CareMatrixConsole",
            "config": {
                "policy_dir": str(settings.policy_dir),
                "database": settings.database,
                "homeserver_url": settings.homeserver_url,
                "appservice_url": settings.appservice_url,
                "appservice_token": as_token,
                "secure_cookies": False,  # the listener is plain HTTP (TLS ends at a proxy in front)
                # The system page allocates a TURN relay as `carematrix status` does
                # (carematrix.stun.relay_check); the secret is in homeserver.yaml already.
                "turn": turn_probe or {"off": "off"},
            },
        })
    if settings.ldap is not None:
        ldap: dict[str, Any] = {"policy_dir": str(settings.policy_dir), "ldap": settings.ldap}
        if admin_user_id:
            # With Synapse's password database off, the module also lets the tooling
            # (carematrix up, the CLI) sign in as the admin account.
            ldap["admin_user_id"] = admin_user_id
            ldap["admin_password_sha256"] = hashlib.sha256(admin_password.encode()).hexdigest()
        modules.append({"module": "synapse_modules.ldap_auth.CareMatrixLdapAuth", "config": ldap})
    return modules
