"""How staff sign in: the hospital directory (LDAP), its single sign-on (OIDC) and
Synapse's own passwords, each validated before anything is written."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.settings import Settings

if TYPE_CHECKING:
    from carematrix.ldap_login import LdapConfig


def ldap_config(settings: Settings) -> LdapConfig | None:
    """The directory settings, validated before anything is written."""
    if settings.ldap is None:
        return None
    from carematrix.ldap_login import LdapConfigError, parse_ldap_config

    if not settings.carematrix_enabled:
        raise DeployError("LDAP sign-in needs the CareMatrix modules; it cannot be used with a plain Synapse")
    try:
        return parse_ldap_config(settings.ldap)
    except LdapConfigError as exc:
        raise DeployError(f"the LDAP configuration (--ldap-config) is invalid: {exc}") from exc


OIDC_REQUIRED = (
    "issuer", "client_id", "client_secret", "authorization_endpoint", "token_endpoint",
    "userinfo_endpoint",
)
OIDC_KEYS = (
    *OIDC_REQUIRED, "discover", "scopes", "staff_number_claim", "idp_name", "skip_verification",
    "user_profile_method", "client_whitelist",
)
OIDC_IDP_ID = "hospital"


def _oidc_url(raw: dict, key: str, insecure_ok: bool) -> str:
    value = raw.get(key)
    url = urlparse(value) if isinstance(value, str) else None
    if not isinstance(value, str) or url is None or url.scheme not in ("https", "http") or not url.hostname:
        raise DeployError(f"the OIDC configuration (--oidc-config) is invalid: '{key}' must be a URL, got {value!r}")
    if url.scheme == "http" and not insecure_ok:
        raise DeployError(
            f"the OIDC configuration (--oidc-config) is invalid: '{key}' must be https:// "
            f"(plain http only with skip_verification, for tests), got {value!r}"
        )
    return value


def oidc_provider(settings: Settings) -> dict[str, Any] | None:
    """Synapse's ``oidc_providers`` entry for the hospital's IdP, validated before anything is
    written: a typo would otherwise surface only as a Synapse start-up failure."""
    raw = settings.oidc
    if raw is None:
        return None
    bad = "the OIDC configuration (--oidc-config) is invalid"
    if not isinstance(raw, dict):
        raise DeployError(f"{bad}: it must be a mapping of keys, got {type(raw).__name__}")
    if not settings.carematrix_enabled:
        raise DeployError("OIDC sign-in needs the CareMatrix modules; it cannot be used with a plain Synapse")
    unknown = sorted(map(str, set(raw) - set(OIDC_KEYS)))
    if unknown:
        raise DeployError(f"{bad}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(OIDC_KEYS)}")
    missing = [k for k in OIDC_REQUIRED if k not in raw or raw[k] in (None, "")]
    if missing:
        hint = " (it may come from CAREMATRIX_OIDC_CLIENT_SECRET)" if "client_secret" in missing else ""
        raise DeployError(f"{bad}: missing {', '.join(missing)}{hint}")
    for key in ("discover", "skip_verification"):
        if not isinstance(raw.get(key, False), bool):
            raise DeployError(f"{bad}: '{key}' must be true or false, got {raw[key]!r}")
    insecure_ok = raw.get("skip_verification", False)
    endpoints = {k: _oidc_url(raw, k, insecure_ok) for k in OIDC_REQUIRED if k.endswith(("endpoint", "issuer"))}
    for key in ("client_id", "client_secret"):
        if not isinstance(raw[key], str):
            raise DeployError(f"{bad}: '{key}' must be a string")
    scopes = raw.get("scopes", ["openid", "profile"])
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) and s for s in scopes):
        raise DeployError(f"{bad}: 'scopes' must be a non-empty list of scope names, got {scopes!r}")
    method = raw.get("user_profile_method", "userinfo_endpoint")
    if method not in ("userinfo_endpoint", "auto"):
        raise DeployError(f"{bad}: 'user_profile_method' must be userinfo_endpoint or auto, got {method!r}")
    if "openid" in scopes and method == "auto" and not raw.get("discover", False):
        # Synapse would then verify an ID token, which needs the IdP's keys (jwks_uri).
        raise DeployError(f"{bad}: with the 'openid' scope and user_profile_method auto, set discover: true")
    idp_name = raw.get("idp_name", "Hospital sign-in")
    if not isinstance(idp_name, str) or not idp_name.strip():
        raise DeployError(f"{bad}: 'idp_name' must be the button text, got {idp_name!r}")
    claim = raw.get("staff_number_claim", "employee_number")
    if not isinstance(claim, str) or not claim.strip():
        raise DeployError(f"{bad}: 'staff_number_claim' must be a claim name, got {claim!r}")
    whitelist = raw.get("client_whitelist", [])
    if not isinstance(whitelist, list) or not all(isinstance(u, str) and u for u in whitelist):
        raise DeployError(f"{bad}: 'client_whitelist' must be a list of client URL prefixes, got {whitelist!r}")
    return {
        "idp_id": OIDC_IDP_ID,
        "idp_name": idp_name.strip(),
        "discover": raw.get("discover", False),
        **endpoints,
        "client_id": raw["client_id"],
        "client_secret": raw["client_secret"],
        "scopes": scopes,
        "user_profile_method": method,
        "skip_verification": insecure_ok,
        # Accounts come from org sync alone: SSO links to them and never creates one.
        "allow_existing_users": True,
        "enable_registration": False,
        "user_mapping_provider": {
            "module": "synapse_modules.sso_mapping.CareMatrixSsoMapping",
            "config": {"policy_dir": str(settings.policy_dir), "staff_number_claim": claim.strip()},
        },
    }


# The operations console's SSO callback (synapse_modules/console_module.py), below the
# homeserver's public URL.
CONSOLE_SSO_CALLBACK = "_carematrix/console/login/sso/callback"


def sso_config(settings: Settings, public_baseurl: str) -> dict[str, Any]:
    """Clients whose redirect gets the login token without Synapse's "continue to ..." page.
    The hospital's own list (none by default, so a lookalike client cannot collect tokens
    silently), plus the operations console's callback: it is this homeserver's own page, the
    person just clicked its SSO button, and the console checks its sign-in state before it
    uses the token — asking "continue to localhost?" there would only teach staff to click
    through the question."""
    whitelist = list((settings.oidc or {}).get("client_whitelist") or [])
    if settings.oidc and settings.carematrix_enabled:
        whitelist.append(public_baseurl.rstrip("/") + "/" + CONSOLE_SSO_CALLBACK)
    return {"client_whitelist": whitelist} if whitelist else {}


def password_config(ldap: LdapConfig | None) -> dict[str, Any]:
    """Synapse's own password database stays on unless the directory alone decides."""
    return {"enabled": True, "localdb_enabled": ldap is None or ldap.local_passwords}
