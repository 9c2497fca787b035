"""Render a complete deployment into the data dir: configs, fresh secrets, signing key.

Secrets are generated once into ``secrets.json`` and reused, so re-running ``carematrix up``
never invalidates sessions or tokens; configs are re-rendered from the templates
(``carematrix_ops/templates/*.in``) every time, so template improvements reach existing
installations.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from carematrix import identity
from carematrix_ops import resources

if TYPE_CHECKING:
    from carematrix.ldap_login import LdapConfig

BOT_LOCALPART = "carematrix"
ADMIN_LOCALPART = "carematrix-admin"
SECRET_KEYS = (
    "registration_shared_secret",
    "macaroon_secret_key",
    "form_secret",
    "as_token",
    "hs_token",
    "admin_password",
    "demo_password",
    # Keys the hidden watermark pattern; `carematrix watermark trace` needs the same key.
    "watermark_key",
    # Bearer token hospital systems use to ask the appservice about their alerts.
    "his_token",
)


# Each FHIR source in the clinical policy pushes with its own bearer token, kept in the
# secrets as "fhir_token:<source>".
FHIR_TOKEN_PREFIX = "fhir_token:"


class DeployError(Exception):
    """A problem the operator can fix; the message says what and how."""


@dataclass
class Settings:
    data_dir: Path
    port: int = 8008
    appservice_port: int = 0  # 0: port + 1
    server_name: str = "localhost"
    bind_address: str = "127.0.0.1"
    database: str = "sqlite"
    db_url: str | None = None
    # None: the checkout's policies/, or in an installed package the data dir's policies/
    # (resources.default_policy_dir); a Path once constructed.
    policy_dir: Path | None = None
    # Tests and benchmarks drive many messages per second from a handful of accounts.
    relaxed_rate_limits: bool = False
    # False renders a plain Synapse (no modules, no appservice): the benchmark baseline.
    carematrix_enabled: bool = True
    # Demo mode gives org-sync-created accounts the demo password.
    demo: bool = True
    # How often the audit chain's head is signed (a checkpoint detects truncation).
    audit_checkpoint_seconds: float = 60.0
    # False leaves the audit module out: only for measuring what the audit costs.
    audit_enabled: bool = True
    # "host:port" of a syslog collector (RFC 5424 over TCP) that receives every record.
    audit_syslog: str | None = None
    # How often the homeserver's retention purge jobs run (messages past their class's
    # lifetime are deleted then); tests shorten it.
    retention_purge_seconds: int = 3600
    # Lets tests move the appservice's on-call clock; never in production.
    test_clock: bool = False
    # MLLP (HL7 v2 over TCP) port the appservice listens on for the HIS; 0 switches it off.
    hl7_port: int = 2575
    hl7_bind: str = "127.0.0.1"
    # An HL7 message over this size gets AR naming the limit (the connection stays open); a
    # frame started and not finished within the timeout is dead-lettered and its connection
    # closed (docs/clinical.md). An idle connection between messages stays open.
    hl7_max_message_bytes: int = 1 << 20
    hl7_frame_timeout_seconds: float = 30.0
    # The hospital systems the appservice reads from and writes to (None: not connected):
    # the FHIR R4 server case summaries come from, the PACS's DICOMweb root, and the EMR
    # FHIR endpoint closed cases are archived to.
    fhir_server: str | None = None
    dicomweb: str | None = None
    emr_archive: str | None = None
    # Bearer token the appservice presents to the FHIR server and the EMR archive (from
    # $CAREMATRIX_SYSTEMS_TOKEN; never written to deployment.json).
    systems_token: str | None = None
    # Start the demo hospital's own systems (carematrix_ops.demo) and connect them: the demo EMR
    # (FHIR server with the demo patients, also receiving case archives) and, if Orthanc is
    # installed, the demo PACS with one CT. Only with demo, never next to real systems;
    # prepare() fills fhir_server/dicomweb/emr_archive with their URLs.
    demo_systems: bool = False
    demo_emr_port: int = 0  # 0: appservice port + 1
    demo_pacs_port: int = 0  # 0: appservice port + 2
    # Sign-in with the hospital directory: the keys of carematrix.ldap_login.parse_ldap_config
    # (docs/org.md); None leaves passwords to Synapse.
    ldap: dict | None = None
    # Sign-in with the hospital's single sign-on (OIDC): the keys of OIDC_KEYS (docs/org.md);
    # None offers no SSO.
    oidc: dict | None = None
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if self.policy_dir is None:
            self.policy_dir = resources.default_policy_dir(self.data_dir)
        self.policy_dir = Path(self.policy_dir).resolve()
        if not self.appservice_port:
            self.appservice_port = self.port + 1
        if not self.demo_emr_port:
            self.demo_emr_port = self.appservice_port + 1
        if not self.demo_pacs_port:
            self.demo_pacs_port = self.appservice_port + 2

    @property
    def homeserver_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def appservice_url(self) -> str:
        return f"http://127.0.0.1:{self.appservice_port}"

    @property
    def demo_emr_url(self) -> str:
        """The demo EMR's FHIR base."""
        return f"http://127.0.0.1:{self.demo_emr_port}/fhir"

    @property
    def demo_pacs_url(self) -> str:
        """The demo PACS's REST API; its DICOMweb root is below it."""
        return f"http://127.0.0.1:{self.demo_pacs_port}"

    @property
    def has_demo_pacs(self) -> bool:
        """Whether this deployment has a demo PACS: asked, and Orthanc is installed."""
        from carematrix_ops.demo import pacs

        return self.demo_systems and self.carematrix_enabled and pacs.installed()


@dataclass
class Paths:
    root: Path
    synapse_dir: Path = field(init=False)
    appservice_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.synapse_dir = self.root / "synapse"
        self.appservice_dir = self.root / "appservice"

    secrets = property(lambda self: self.root / "secrets.json")
    deployment = property(lambda self: self.root / "deployment.json")
    homeserver_config = property(lambda self: self.synapse_dir / "homeserver.yaml")
    log_config = property(lambda self: self.synapse_dir / "log.yaml")
    signing_key = property(lambda self: self.synapse_dir / "signing.key")
    audit_signing_key = property(lambda self: self.synapse_dir / "audit_signing.key")
    audit_verify_key = property(lambda self: self.root / "audit_verify.key")
    audit_spool = property(lambda self: self.root / "audit-syslog-spool.db")
    sqlite_db = property(lambda self: self.synapse_dir / "homeserver.db")
    media = property(lambda self: self.synapse_dir / "media")
    synapse_log = property(lambda self: self.synapse_dir / "homeserver.log")
    registration = property(lambda self: self.appservice_dir / "registration.yaml")
    appservice_config = property(lambda self: self.appservice_dir / "config.yaml")
    appservice_db = property(lambda self: self.appservice_dir / "appservice.db")
    appservice_log = property(lambda self: self.appservice_dir / "appservice.log")
    logs = property(lambda self: self.root / "logs")
    watermark_cache = property(lambda self: self.root / "watermark-cache")
    case_archives = property(lambda self: self.root / "case-archives")
    demo_pacs = property(lambda self: self.root / "demo-pacs")
    demo_pacs_log = property(lambda self: self.logs / "demo-pacs.out")
    demo_emr_log = property(lambda self: self.logs / "demo-emr.out")


@dataclass
class Deployment:
    settings: Settings
    paths: Paths
    secrets: dict[str, str]

    @property
    def bot_user_id(self) -> str:
        return identity.user_id(BOT_LOCALPART, self.settings.server_name)

    @property
    def admin_user_id(self) -> str:
        return identity.user_id(ADMIN_LOCALPART, self.settings.server_name)


def render_template(name: str, values: dict[str, Any]) -> str:
    """Fill ``${key}`` placeholders with JSON (valid YAML) so quoting can never break."""
    text = resources.template(name)
    rendered = {k: json.dumps(v, ensure_ascii=False) for k, v in values.items()}
    try:
        return string.Template(text).substitute(rendered)
    except KeyError as exc:
        raise DeployError(f"config template {name} uses unknown placeholder {exc}") from exc


def check_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeployError(
            f"cannot create data dir {path}: {exc.strerror}; choose another with "
            "--data-dir or CAREMATRIX_DATA_DIR"
        ) from exc
    probe = path / ".write-test"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise DeployError(
            f"data dir {path} is not writable ({exc.strerror}); fix its permissions or choose "
            "another with --data-dir or CAREMATRIX_DATA_DIR"
        ) from exc


def ensure_policy_dir(settings: Settings) -> None:
    """The policy directory must exist; a data dir that is to use its own policies/ gets a
    copy of the demo policy there on its first start (no deployment recorded yet) and never
    later: a data dir that lost its policy must not come back as the demo hospital, whose
    org sync would replace the staff.
    """
    target = settings.policy_dir
    assert target is not None  # Settings.__post_init__ resolved the default
    if target.is_dir():
        return
    own = settings.data_dir / "policies"
    if target != own:
        raise DeployError(
            f"the policy directory {target} does not exist; pass the right --policy-dir "
            "(or CAREMATRIX_POLICY_DIR)"
        )
    if Paths(settings.data_dir).deployment.exists():
        raise DeployError(
            f"the policy directory {target} of this data dir is missing; restore it from backup "
            "(the demo policy is copied only on a data dir's first start)"
        )
    check_data_dir(settings.data_dir)
    resources.copy_demo_policy(target)


def check_port_free(host: str, port: int, what: str, hint: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DeployError(f"port {port} on {host} ({what}) is already in use: {exc.strerror}; {hint}") from exc


def check_ports(settings: Settings) -> None:
    """Every listening port must be free before anything starts or is written."""
    check_port_free(settings.bind_address, settings.port, "homeserver", "stop what uses it or set CAREMATRIX_PORT / --port")
    if settings.carematrix_enabled:
        check_port_free(
            "127.0.0.1",
            settings.appservice_port,
            "appservice",
            "stop what uses it or set CAREMATRIX_APPSERVICE_PORT / --appservice-port",
        )
        if settings.hl7_port:
            check_port_free(settings.hl7_bind, settings.hl7_port, "HL7 (MLLP)", "stop what uses it or set --hl7-port")
        if settings.demo_systems:
            hint = "stop what uses it, set --demo-emr-port / --demo-pacs-port, or run with --no-demo-systems"
            check_port_free("127.0.0.1", settings.demo_emr_port, "demo EMR", hint)
            if settings.has_demo_pacs:
                # Orthanc listens on every interface (and refuses remote clients).
                check_port_free("0.0.0.0", settings.demo_pacs_port, "demo PACS", hint)


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write via a temp file and rename, so a crash never leaves a half-written config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def load_or_create_secrets(paths: Paths, extra_keys: list[str] | None = None) -> dict[str, str]:
    existing: dict[str, str] = {}
    if paths.secrets.exists():
        try:
            existing = json.loads(paths.secrets.read_text())
        except (OSError, ValueError) as exc:
            raise DeployError(
                f"{paths.secrets} is unreadable or corrupt ({exc}); restore it from backup — "
                "deleting it would invalidate every token and the appservice registration"
            ) from exc
    missing = [k for k in (*SECRET_KEYS, *(extra_keys or [])) if not existing.get(k)]
    if missing:
        for key in missing:
            existing[key] = (
                "-".join(secrets.token_hex(2) for _ in range(3))
                if key == "demo_password"
                else secrets.token_urlsafe(32)
            )
        _atomic_write(paths.secrets, json.dumps(existing, indent=2) + "\n", 0o600)
    return existing


def ensure_signing_key(paths: Paths) -> None:
    if paths.signing_key.exists():
        return
    from signedjson.key import generate_signing_key, write_signing_keys

    key = generate_signing_key("a_" + secrets.token_hex(2))
    tmp = paths.signing_key.with_name("signing.key.tmp")
    paths.signing_key.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        write_signing_keys(fh, [key])
    os.replace(tmp, paths.signing_key)


def parse_db_url(db_url: str) -> dict[str, Any]:
    url = urlparse(db_url)
    if url.scheme not in ("postgres", "postgresql") or not url.path.strip("/"):
        raise DeployError(
            f"--db-url must look like postgresql://user[:password]@host[:port]/dbname, got {db_url!r}"
        )
    args: dict[str, Any] = {
        "dbname": unquote(url.path.strip("/")),
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 5432,
        "user": unquote(url.username) if url.username else "postgres",
    }
    if url.password:
        args["password"] = unquote(url.password)
    return args


def prepare_postgres(db_url: str) -> dict[str, Any]:
    """Check that PostgreSQL answers, and create the databases Synapse and the appservice
    need (with the C collation Synapse requires) if they do not exist yet."""
    import psycopg2

    from carematrix_ops.pgadmin import create_database

    args = parse_db_url(db_url)
    where = f"{args['host']}:{args['port']}"
    admin_args = {**args, "dbname": "postgres", "connect_timeout": 5}
    try:
        conn = psycopg2.connect(**admin_args)
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
        raise DeployError(
            f"cannot reach PostgreSQL at {where} as {args['user']}: {first}; start it "
            "(e.g. pg_ctlcluster <version> main start) or pass the right --db-url"
        ) from exc
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for dbname in (args["dbname"], appservice_pg_dbname(args["dbname"])):
                cur.execute("SELECT datcollate, datctype FROM pg_database WHERE datname = %s", (dbname,))
                row = cur.fetchone()
                if row is None:
                    create_database(cur, dbname)
                elif dbname == args["dbname"] and (row[0] != "C" or row[1] != "C"):
                    raise DeployError(
                        f"PostgreSQL database {dbname} at {where} has collation {row[0]}/{row[1]}; "
                        "Synapse needs C: create it with LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
                    )
    except psycopg2.Error as exc:
        raise DeployError(f"PostgreSQL at {where} refused to prepare the databases: {exc}".strip()) from exc
    finally:
        conn.close()
    return args


def appservice_pg_dbname(synapse_dbname: str) -> str:
    return f"{synapse_dbname}_appservice"


def _database_values(settings: Settings, paths: Paths) -> tuple[dict[str, Any], str]:
    if settings.database == "sqlite":
        return (
            {"name": "sqlite3", "args": {"database": str(paths.sqlite_db)}},
            f"sqlite:///{paths.appservice_db}",
        )
    if not settings.db_url:
        raise DeployError("--database postgres needs --db-url postgresql://user@host:5432/dbname")
    args = prepare_postgres(settings.db_url)
    as_url = urlparse(settings.db_url)._replace(path="/" + appservice_pg_dbname(args["dbname"])).geturl()
    return ({"name": "psycopg2", "args": {**args, "cp_min": 2, "cp_max": 10}}, as_url)


def _record_deployment(settings: Settings, paths: Paths) -> None:
    """Refuse to silently switch an existing data dir to another database."""
    record = {"database": settings.database, "db_url": settings.db_url}
    if paths.deployment.exists():
        try:
            old = json.loads(paths.deployment.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("database") and old.get("database") != settings.database:
            raise DeployError(
                f"data dir {paths.root} holds a {old['database']} deployment; run with "
                f"--database {old['database']} or use another --data-dir"
            )
    full = {**asdict(settings), **record}
    full = {k: str(v) if isinstance(v, Path) else v for k, v in full.items()}
    full.pop("systems_token", None)
    if isinstance(full.get("ldap"), dict):
        # Tooling reads this file; the directory's service password is only in homeserver.yaml.
        full["ldap"] = {k: v for k, v in full["ldap"].items() if k != "bind_password"}
    if isinstance(full.get("oidc"), dict):
        # Likewise the IdP's client secret.
        full["oidc"] = {k: v for k, v in full["oidc"].items() if k != "client_secret"}
    _atomic_write(paths.deployment, json.dumps(full, indent=2) + "\n", 0o600)


def _ldap_config(settings: Settings) -> LdapConfig | None:
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
    if url is None or url.scheme not in ("https", "http") or not url.hostname:
        raise DeployError(f"the OIDC configuration (--oidc-config) is invalid: '{key}' must be a URL, got {value!r}")
    if url.scheme == "http" and not insecure_ok:
        raise DeployError(
            f"the OIDC configuration (--oidc-config) is invalid: '{key}' must be https:// "
            f"(plain http only with skip_verification, for tests), got {value!r}"
        )
    return value


def _oidc_provider(settings: Settings) -> dict[str, Any] | None:
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


def _sso_config(settings: Settings) -> dict[str, Any]:
    """Clients whose redirect gets the login token without Synapse's "continue to ..." page;
    none by default, so a lookalike client cannot collect tokens silently."""
    whitelist = (settings.oidc or {}).get("client_whitelist") or []
    return {"client_whitelist": whitelist} if whitelist else {}


def _password_config(ldap: LdapConfig | None) -> dict[str, Any]:
    """Synapse's own password database stays on unless the directory alone decides."""
    return {"enabled": True, "localdb_enabled": ldap is None or ldap.local_passwords}


def _modules(
    settings: Settings,
    paths: Paths,
    bot_user_id: str,
    as_token: str,
    watermark_key: str,
    admin_user_id: str = "",
    admin_password: str = "",
) -> list[dict[str, Any]]:
    """The Synapse modules, audit first: the policy module records through its writer."""
    if not settings.carematrix_enabled:
        return []
    audit = {
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
        },
    }
    modules = [audit, policy] if settings.audit_enabled else [policy]
    if settings.ldap is not None:
        ldap: dict[str, Any] = {"policy_dir": str(settings.policy_dir), "ldap": settings.ldap}
        if admin_user_id:
            # With Synapse's password database off, the module also lets the tooling
            # (carematrix up, the CLI) sign in as the admin account.
            ldap["admin_user_id"] = admin_user_id
            ldap["admin_password_sha256"] = hashlib.sha256(admin_password.encode()).hexdigest()
        modules.append({"module": "synapse_modules.ldap_auth.CareMatrixLdapAuth", "config": ldap})
    return modules


def _connect_demo_systems(settings: Settings) -> None:
    """Point the appservice at the demo EMR and PACS; their URLs must be in the settings
    before the appservice config is rendered. Repeating it is harmless."""
    if not settings.demo_systems:
        return
    if not settings.demo or not settings.carematrix_enabled:
        raise DeployError("the demo EMR and PACS come only with the demo hospital (not with --no-demo "
                          "or a plain Synapse); pass --no-demo-systems")
    from carematrix_ops.demo.pacs import DICOMWEB_ROOT

    wanted = {
        "fhir_server": settings.demo_emr_url,
        "emr_archive": settings.demo_emr_url,
        "dicomweb": settings.demo_pacs_url + DICOMWEB_ROOT if settings.has_demo_pacs else None,
    }
    for key, url in wanted.items():
        if getattr(settings, key) not in (None, url):
            raise DeployError(
                f"--{key.replace('_', '-')} connects a real system; with it, pass --no-demo-systems "
                "(the demo EMR and PACS are never mixed with a hospital's systems)"
            )
        setattr(settings, key, url)


def prepare(settings: Settings) -> Deployment:
    """Validate inputs, then write everything; nothing is written if validation fails."""
    from carematrix.policy import PolicyInvalid, load_policy

    if settings.database not in ("sqlite", "postgres"):
        raise DeployError(f"--database must be sqlite or postgres, got {settings.database!r}")
    if not re.match(r"^[A-Za-z0-9.-]+(:[0-9]+)?$", settings.server_name):
        raise DeployError(f"server name {settings.server_name!r} is not a valid host name")
    ldap = _ldap_config(settings)
    oidc = _oidc_provider(settings)
    ensure_policy_dir(settings)
    try:
        policy = load_policy(settings.policy_dir)
    except PolicyInvalid as exc:
        raise DeployError(
            f"the policy in {settings.policy_dir} is invalid; fix it (carematrix policy check):\n{exc}"
        ) from exc
    _connect_demo_systems(settings)
    check_data_dir(settings.data_dir)
    paths = Paths(settings.data_dir)
    database, appservice_database = _database_values(settings, paths)
    _record_deployment(settings, paths)
    for d in (paths.synapse_dir, paths.appservice_dir, paths.media, paths.logs):
        d.mkdir(parents=True, exist_ok=True)
    sources = sorted((policy.clinical.fhir_sources or {}) if policy.clinical else {})
    secret_values = load_or_create_secrets(paths, [FHIR_TOKEN_PREFIX + name for name in sources])
    ensure_signing_key(paths)
    deployment = Deployment(settings, paths, secret_values)
    server_re = re.escape(settings.server_name)
    relaxed = {"per_second": 1000, "burst_count": 10000}
    values: dict[str, Any] = {
        "server_name": settings.server_name,
        "public_baseurl": f"http://{'localhost' if settings.bind_address in ('127.0.0.1', '0.0.0.0') else settings.bind_address}:{settings.port}/",
        "pid_file": str(paths.synapse_dir / "homeserver.pid"),
        "port": settings.port,
        "bind_addresses": [settings.bind_address],
        "x_forwarded": False,
        "database": database,
        "log_config": str(paths.log_config),
        "media_store_path": str(paths.media),
        "signing_key_path": str(paths.signing_key),
        "appservice_files": [str(paths.registration)] if settings.carematrix_enabled else [],
        "modules": _modules(
            settings, paths, deployment.bot_user_id, secret_values["as_token"], secret_values["watermark_key"],
            deployment.admin_user_id, secret_values["admin_password"],
        ),
        "password_config": _password_config(ldap),
        "oidc_providers": [oidc] if oidc else [],
        "sso": _sso_config(settings),
        "retention": {
            "enabled": settings.carematrix_enabled,
            "purge_jobs": [{"interval": f"{settings.retention_purge_seconds}s"}],
        },
        "rc_message": relaxed if settings.relaxed_rate_limits else {"per_second": 10, "burst_count": 50},
        "rc_login": (
            {k: relaxed for k in ("address", "account", "failed_attempts")}
            if settings.relaxed_rate_limits
            else {"address": {"per_second": 1, "burst_count": 20}, "account": {"per_second": 1, "burst_count": 20}, "failed_attempts": {"per_second": 0.2, "burst_count": 5}}
        ),
        # Synapse's own defaults, raised only for tests and benchmarks.
        "rc_invites": (
            {k: relaxed for k in ("per_room", "per_user", "per_issuer")}
            if settings.relaxed_rate_limits
            else {"per_room": {"per_second": 0.3, "burst_count": 10}, "per_user": {"per_second": 0.003, "burst_count": 5}, "per_issuer": {"per_second": 0.5, "burst_count": 5}}
        ),
        "rc_joins": (
            {k: relaxed for k in ("local", "remote")}
            if settings.relaxed_rate_limits
            else {"local": {"per_second": 0.1, "burst_count": 10}, "remote": {"per_second": 0.01, "burst_count": 10}}
        ),
        "rc_joins_per_room": relaxed if settings.relaxed_rate_limits else {"per_second": 1, "burst_count": 10},
        "policy_dir": str(settings.policy_dir),
        "log_file": str(paths.synapse_log),
        "log_level": settings.log_level,
        "background_update_sleep": not settings.relaxed_rate_limits,
        "appservice_url": settings.appservice_url,
        "bot_localpart": BOT_LOCALPART,
        "role_user_regex": f"@{identity.ROLE_PREFIX}.+:{server_re}",
        "role_alias_regex": f"#{identity.ROLE_PREFIX}.+:{server_re}",
        "any_alias_regex": f"#.+:{server_re}",
        "homeserver_url": settings.homeserver_url,
        "appservice_host": "127.0.0.1",
        "appservice_port": settings.appservice_port,
        "appservice_database": appservice_database,
        "appservice_log_file": str(paths.appservice_log),
        # With the directory deciding alone, new accounts get no local password: one shared
        # demo password would open every account if the local database were switched on again.
        "initial_password": (
            secret_values["demo_password"] if settings.demo and _password_config(ldap)["localdb_enabled"] else None
        ),
        "test_clock": settings.test_clock,
        "hl7_port": settings.hl7_port if settings.carematrix_enabled else 0,
        "hl7_bind": settings.hl7_bind,
        "hl7_max_message_bytes": settings.hl7_max_message_bytes,
        "hl7_frame_timeout_seconds": settings.hl7_frame_timeout_seconds,
        "his_token": secret_values["his_token"],
        "fhir_tokens": {
            key[len(FHIR_TOKEN_PREFIX):]: value for key, value in secret_values.items()
            if key.startswith(FHIR_TOKEN_PREFIX)
        },
        "fhir_server": settings.fhir_server,
        "dicomweb": settings.dicomweb,
        "emr_archive": settings.emr_archive,
        "systems_token": settings.systems_token,
        "case_archives": str(paths.case_archives),
    }
    for key in SECRET_KEYS:
        values[key] = secret_values[key]
    rendered = [
        (paths.homeserver_config, render_template("homeserver.yaml.in", values), 0o600),
        (paths.log_config, render_template("log.yaml.in", values), 0o644),
        (paths.registration, render_template("registration.yaml.in", values), 0o600),
        (paths.appservice_config, render_template("appservice.yaml.in", values), 0o600),
    ]
    for path, text, mode in rendered:
        _atomic_write(path, text, mode)
    if settings.has_demo_pacs:
        from carematrix_ops.demo.pacs import write_config

        write_config(paths.demo_pacs, settings.demo_pacs_port)
    return deployment


def load_existing(data_dir: Path) -> Deployment:
    """The deployment a previous ``up`` wrote (for ``status`` and tooling)."""
    paths = Paths(Path(data_dir).resolve())
    if not paths.deployment.exists():
        raise DeployError(f"no CareMatrix deployment in {paths.root}; run 'make run' (carematrix up) first")
    try:
        raw = json.loads(paths.deployment.read_text())
        secret_values = json.loads(paths.secrets.read_text())
    except (OSError, ValueError) as exc:
        raise DeployError(f"cannot read the deployment in {paths.root}: {exc}") from exc
    known = {f for f in Settings.__dataclass_fields__}
    settings = Settings(**{k: v for k, v in raw.items() if k in known})
    return Deployment(settings, paths, secret_values)
