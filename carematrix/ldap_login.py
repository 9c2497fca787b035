"""Signing in with the hospital directory (LDAP): configuration and the login-to-staff mapping.

Pure logic, no network: the directory calls are in ``synapse_modules.ldap_directory`` and the
Synapse wiring in ``synapse_modules.ldap_auth``. The staff list, not the directory, decides
who has an account: the directory only vouches for the password of someone already on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from carematrix import identity
from carematrix.policy.model import Policy
from carematrix.policy.org import staff_localpart

KEYS = (
    "uri", "base_dn", "staff_number_attribute", "user_filter", "bind_dn", "bind_password",
    "start_tls", "tls_ca_file", "timeout_seconds", "local_passwords",
)
# An attribute description (RFC 4512): a name or a numeric OID.
ATTRIBUTE_RE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)$")
MAX_TIMEOUT_SECONDS = 60


class LdapConfigError(ValueError):
    """The LDAP configuration is unusable; the message names the key and what it needs."""


@dataclass(frozen=True)
class LdapConfig:
    uri: str
    base_dn: str
    staff_number_attribute: str = "employeeNumber"
    user_filter: str | None = None
    # None: search anonymously (many directories let anyone look up staff numbers).
    bind_dn: str | None = None
    bind_password: str | None = None
    start_tls: bool = False
    # CA certificate (PEM) the directory's TLS certificate must chain to; None: the
    # system's trusted CAs. Certificates are always verified.
    tls_ca_file: Path | None = None
    timeout_seconds: float = 5.0
    # True keeps Synapse's own password database as a second way in (migration only).
    local_passwords: bool = False

    @property
    def uses_tls(self) -> bool:
        return self.start_tls or self.uri.lower().startswith("ldaps://")

    @property
    def host(self) -> str:
        return urlparse(self.uri).hostname or ""

    def __repr__(self) -> str:
        # Config objects end up in logs and tracebacks; the service password must not.
        shown = "***" if self.bind_password else None
        return (
            f"LdapConfig(uri={self.uri!r}, base_dn={self.base_dn!r}, bind_dn={self.bind_dn!r}, "
            f"bind_password={shown!r}, start_tls={self.start_tls!r}, "
            f"local_passwords={self.local_passwords!r})"
        )


def parse_ldap_config(raw: dict[str, Any]) -> LdapConfig:
    """Validate the operator's LDAP settings; raises ``LdapConfigError`` naming the key."""
    if not isinstance(raw, dict):
        raise LdapConfigError(f"the LDAP configuration must be a mapping of keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise LdapConfigError(
            f"unknown LDAP key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(KEYS)}"
        )
    uri = _uri(raw.get("uri"))
    base_dn = _dn(raw.get("base_dn"), "base_dn", "the subtree that holds the staff entries, e.g. ou=people,dc=hospital,dc=example")
    attribute = raw.get("staff_number_attribute", "employeeNumber")
    if not isinstance(attribute, str) or not ATTRIBUTE_RE.match(attribute):
        raise LdapConfigError(
            f"'staff_number_attribute' must be an LDAP attribute name like employeeNumber, got {attribute!r}"
        )
    user_filter = _user_filter(raw.get("user_filter"))
    bind_dn, bind_password = _service_account(raw.get("bind_dn"), raw.get("bind_password"))
    start_tls = _bool(raw, "start_tls")
    if start_tls and uri.lower().startswith("ldaps://"):
        raise LdapConfigError("'start_tls' cannot be used with an ldaps:// 'uri' (the connection is already TLS)")
    ca_file = raw.get("tls_ca_file")
    if ca_file is not None:
        if not isinstance(ca_file, str) or not ca_file:
            raise LdapConfigError(f"'tls_ca_file' must be the path of a PEM CA certificate, got {ca_file!r}")
        if not (start_tls or uri.lower().startswith("ldaps://")):
            raise LdapConfigError("'tls_ca_file' is only used with an ldaps:// 'uri' or 'start_tls: true'")
        if not Path(ca_file).is_file():
            raise LdapConfigError(f"'tls_ca_file' {ca_file} does not exist or is not a file")
    timeout = raw.get("timeout_seconds", 5)
    if (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not 0 < timeout <= MAX_TIMEOUT_SECONDS
    ):
        raise LdapConfigError(
            f"'timeout_seconds' must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECONDS}, got {timeout!r}"
        )
    return LdapConfig(
        uri=uri,
        base_dn=base_dn,
        staff_number_attribute=attribute,
        user_filter=user_filter,
        bind_dn=bind_dn,
        bind_password=bind_password,
        start_tls=start_tls,
        tls_ca_file=Path(ca_file) if ca_file else None,
        timeout_seconds=float(timeout),
        local_passwords=_bool(raw, "local_passwords"),
    )


def _uri(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise LdapConfigError("'uri' is required: the directory's address, e.g. ldaps://ldap.hospital.example")
    url = urlparse(value)
    if url.scheme.lower() not in ("ldap", "ldaps"):
        raise LdapConfigError(f"'uri' must start with ldap:// or ldaps://, got {value!r}")
    try:
        _ = url.port  # parsing it is the check
    except ValueError:
        raise LdapConfigError(f"'uri' has an invalid port: {value!r}") from None
    if not url.hostname:
        raise LdapConfigError(f"'uri' must name a host, e.g. ldaps://ldap.hospital.example, got {value!r}")
    if url.path not in ("", "/") or url.query or url.fragment or url.username or url.password:
        raise LdapConfigError(
            f"'uri' must be only scheme, host and port (set the search base with 'base_dn'), got {value!r}"
        )
    return value.rstrip("/")


def _dn(value: Any, key: str, hint: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LdapConfigError(f"'{key}' is required: {hint}")
    try:
        parse_dn(value)
    except LDAPInvalidDnError as exc:
        raise LdapConfigError(f"'{key}' is not a valid DN ({exc}): {value!r}") from None
    return value.strip()


def _user_filter(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise LdapConfigError(f"'user_filter' must be an LDAP filter like (objectClass=inetOrgPerson), got {value!r}")
    text = value.strip()
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            break
    if not (text.startswith("(") and text.endswith(")")) or depth != 0:
        raise LdapConfigError(
            f"'user_filter' must be one parenthesised LDAP filter like (objectClass=inetOrgPerson), got {value!r}"
        )
    return text


def _service_account(bind_dn: Any, bind_password: Any) -> tuple[str | None, str | None]:
    if bind_dn is None and bind_password is None:
        return None, None
    if bind_dn is None:
        raise LdapConfigError("'bind_password' is set but 'bind_dn' is not: name the service account too")
    dn = _dn(bind_dn, "bind_dn", "the service account used to search the directory")
    # An empty password would make an "unauthenticated bind", which servers accept as
    # anonymous: the search would silently run without the service account.
    if not isinstance(bind_password, str) or not bind_password:
        raise LdapConfigError(
            "'bind_dn' is set but 'bind_password' is missing or empty "
            "(with carematrix up it may come from CAREMATRIX_LDAP_BIND_PASSWORD)"
        )
    return dn, bind_password


def _bool(raw: dict[str, Any], key: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise LdapConfigError(f"'{key}' must be true or false, got {value!r}")
    return value


def staff_number_for_login(login: str, policy: Policy, server_name: str | None = None) -> str | None:
    """The staff number behind what a person typed (``D1001``, ``d1001`` or a full Matrix ID),
    or None unless they are on the staff list now: leavers stay refused even while the
    directory still knows them. A Matrix ID of another server (when ``server_name`` is
    given) is never ours."""
    if not isinstance(login, str) or not login:
        return None
    local = login
    if login.startswith("@"):
        server = identity.server_name(login)
        if not server or (server_name is not None and server.lower() != server_name.lower()):
            return None
        local = identity.localpart(login)
    staff = policy.staff_for_localpart(staff_localpart(local))
    return staff.staff_number if staff is not None else None


def search_filter(config: LdapConfig, staff_number: str) -> str:
    """The filter that finds one person's entry. The staff number is escaped, so a login
    like ``*`` or ``x)(uid=*`` is looked up literally and can never match other entries."""
    clause = f"({config.staff_number_attribute}={escape_filter_chars(staff_number)})"
    return f"(&{clause}{config.user_filter})" if config.user_filter else clause
