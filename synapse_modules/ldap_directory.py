"""Asks the hospital directory (LDAP) whether a staff member's password is right.

Blocking network calls (ldap3, synchronous): Synapse runs ``check_password`` in a thread.
Every call opens its own connections, so calls from several threads never share one, and
every failure is a refusal: there is no cache and no fallback when the directory is down.
"""

from __future__ import annotations

import math
import ssl
from dataclasses import dataclass

from ldap3 import ANONYMOUS, NONE, SIMPLE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException

from carematrix.ldap_login import LdapConfig, search_filter

# Result codes (RFC 4511) that answer the question rather than break the conversation.
INVALID_CREDENTIALS = 49
SIZE_LIMIT_EXCEEDED = 4


@dataclass(frozen=True)
class DirectoryVerdict:
    """``reason`` is for the server log (never contains the password); ``unavailable`` tells
    an outage or misconfiguration (page IT) from a person's wrong password."""

    accepted: bool
    reason: str
    dn: str | None = None
    unavailable: bool = False


def _refused(reason: str, dn: str | None = None) -> DirectoryVerdict:
    return DirectoryVerdict(False, reason, dn)


def _unavailable(reason: str) -> DirectoryVerdict:
    return DirectoryVerdict(False, reason, unavailable=True)


def server_for(config: LdapConfig) -> Server:
    """TLS always verifies the directory's certificate and host name: ldap3's own default
    would accept any certificate, handing staff passwords to whoever answers."""
    tls = None
    if config.uses_tls:
        tls = Tls(
            validate=ssl.CERT_REQUIRED,
            ca_certs_file=str(config.tls_ca_file) if config.tls_ca_file else None,
            sni=config.host,
        )
    return Server(config.uri, get_info=NONE, tls=tls, connect_timeout=config.timeout_seconds)


def _connect(server: Server, config: LdapConfig, user: str | None, password: str | None) -> Connection:
    """An open (and, if configured, TLS-protected) connection, not yet bound."""
    conn = Connection(
        server,
        user=user,
        password=password,
        authentication=SIMPLE if user else ANONYMOUS,
        # ldap3 sets the socket's receive timeout in whole seconds (it fails on a fraction).
        receive_timeout=max(1, math.ceil(config.timeout_seconds)),
        read_only=True,
        raise_exceptions=False,
        auto_referrals=False,
    )
    conn.open(read_server_info=False)
    if config.start_tls and not conn.start_tls(read_server_info=False):
        conn.unbind()
        raise LDAPException(f"StartTLS refused: {conn.result}")
    return conn


def _describe(result: dict | None) -> str:
    if not result:
        return "no answer"
    message = f": {result['message']}" if result.get("message") else ""
    return f"{result.get('description', 'error')} (code {result.get('result')}){message}"


def find_entry(config: LdapConfig, staff_number: str) -> tuple[str | None, DirectoryVerdict | None]:
    """The DN of the one entry holding ``staff_number``, or a verdict saying why not. Two
    entries with one staff number is a directory error; guessing one would let the wrong
    person's password open the account."""
    server = server_for(config)
    conn = _connect(server, config, config.bind_dn, config.bind_password)
    try:
        if config.bind_dn and not conn.bind():
            return None, _unavailable(f"the service account {config.bind_dn} cannot bind: {_describe(conn.result)}")
        conn.search(
            config.base_dn, search_filter(config, staff_number), SUBTREE,
            attributes=[], size_limit=2, time_limit=max(1, math.ceil(config.timeout_seconds)),
        )
        result = conn.result or {}
        if result.get("result") not in (0, SIZE_LIMIT_EXCEEDED):
            return None, _unavailable(f"search under {config.base_dn} failed: {_describe(result)}")
        dns = [e["dn"] for e in conn.response or () if e.get("type") == "searchResEntry"]
    finally:
        conn.unbind()
    if not dns:
        return None, _refused(f"no directory entry with {config.staff_number_attribute}={staff_number}")
    if len(dns) > 1 or result.get("result") == SIZE_LIMIT_EXCEEDED:
        return None, _unavailable(
            f"more than one directory entry has {config.staff_number_attribute}={staff_number} "
            f"({', '.join(dns)}); fix the directory"
        )
    return dns[0], None


def check_password(config: LdapConfig, staff_number: str, password: str) -> DirectoryVerdict:
    """Find the person's entry, then bind as it with ``password``."""
    # An empty password makes an "unauthenticated bind", which many servers answer with
    # success: it would open every account.
    if not isinstance(password, str) or not password:
        return _refused("empty password")
    try:
        dn, verdict = find_entry(config, staff_number)
        if verdict is not None:
            return verdict
        assert dn is not None
        conn = _connect(server_for(config), config, dn, password)
        try:
            if conn.bind():
                return DirectoryVerdict(True, "password accepted", dn)
            result = conn.result or {}
        finally:
            conn.unbind()
    except (LDAPException, OSError) as exc:
        return _unavailable(f"directory {config.uri} unreachable or failing: {type(exc).__name__}: {exc}")
    if result.get("result") == INVALID_CREDENTIALS:
        return _refused("wrong password", dn)
    # e.g. a locked or expired account (password policy) or an unwilling server.
    return _refused(f"the directory refused the bind: {_describe(result)}", dn)
