"""The ``carematrix`` command: run the stack, check policies, report health."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from carematrix import identity
from carematrix.hsdb.migrations import SchemaVersionError
from carematrix.policy import PolicyInvalid, load_policy
from carematrix_ops import resources
from carematrix_ops.deploy.checks import check_ports
from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.record import load_existing
from carematrix_ops.deploy.settings import Settings
from carematrix_ops.http import HttpError, request_json

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _default_data_dir() -> Path:
    """$CAREMATRIX_DATA_DIR, else a checkout's var/; an installed package must be told."""
    chosen = os.environ.get("CAREMATRIX_DATA_DIR")
    if chosen:
        return Path(chosen)
    default = resources.default_data_dir()
    if default is None:
        raise DeployError("no data dir: pass --data-dir DIR or set CAREMATRIX_DATA_DIR")
    return default


def _policy_dir(given: Path | None) -> Path:
    """The policy directory a command reads: named, $CAREMATRIX_POLICY_DIR, or the one
    ``carematrix up`` uses by default (the checkout's, or the data dir's)."""
    chosen = given or os.environ.get("CAREMATRIX_POLICY_DIR")
    if chosen:
        return Path(chosen)
    try:
        data_dir = _default_data_dir()
    except DeployError:
        raise DeployError(
            "no policy directory: name it, or set CAREMATRIX_POLICY_DIR (or CAREMATRIX_DATA_DIR "
            "for the data dir's own policies/)"
        ) from None
    return resources.default_policy_dir(data_dir)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise DeployError(f"{name}={raw!r} is not a port number") from None


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is not between 1 and 65535")
    return port


def _byte_count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of bytes") from None
    if count < 1024:
        raise argparse.ArgumentTypeError(f"{count} is below 1024 bytes")
    return count


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of seconds")
    return seconds


def _hl7_limits(args: argparse.Namespace) -> dict[str, Any]:
    """The MLLP limits given by flag or environment; the ones not given keep their defaults."""
    out: dict[str, Any] = {}
    for key, flag, env, parse in (
        ("hl7_max_message_bytes", args.hl7_max_message_bytes, "CAREMATRIX_HL7_MAX_MESSAGE_BYTES", _byte_count),
        ("hl7_frame_timeout_seconds", args.hl7_frame_timeout, "CAREMATRIX_HL7_FRAME_TIMEOUT", _seconds),
    ):
        raw = os.environ.get(env)
        if flag is not None:
            out[key] = flag
        elif raw:
            try:
                out[key] = parse(raw)
            except argparse.ArgumentTypeError as exc:
                raise DeployError(f"{env}={raw!r}: {exc}") from None
    return out


def _settings_file(path: Path, flag: str, what: str) -> dict:
    """A YAML file of settings named on the command line, or a DeployError saying why not."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DeployError(f"cannot read {flag} {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise DeployError(f"{flag} {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise DeployError(f"{flag} {path} must be a mapping of {what} settings (see docs/configuration.md)")
    return raw


def _ldap_settings(path: Path | None) -> dict | None:
    """The --ldap-config file; the service account's password may come from the environment
    instead, so the file can be kept with the other configuration."""
    if path is None:
        return None
    raw = _settings_file(path, "--ldap-config", "LDAP")
    env_password = os.environ.get("CAREMATRIX_LDAP_BIND_PASSWORD")
    if env_password:
        if not raw.get("bind_dn"):
            raise DeployError(f"CAREMATRIX_LDAP_BIND_PASSWORD is set but {path} has no bind_dn to use it with")
        if raw.get("bind_password"):
            raise DeployError(
                f"the LDAP bind password is set both in {path} and in CAREMATRIX_LDAP_BIND_PASSWORD; keep one"
            )
        raw["bind_password"] = env_password
    return raw


def _oidc_settings(path: Path | None) -> dict | None:
    """The --oidc-config file; the client secret may come from the environment instead, so
    the file can be kept with the other configuration."""
    if path is None:
        return None
    raw = _settings_file(path, "--oidc-config", "OIDC")
    env_secret = os.environ.get("CAREMATRIX_OIDC_CLIENT_SECRET")
    if env_secret:
        if raw.get("client_secret"):
            raise DeployError(
                f"the OIDC client secret is set both in {path} and in CAREMATRIX_OIDC_CLIENT_SECRET; keep one"
            )
        raw["client_secret"] = env_secret
    return raw


def up_settings(args: argparse.Namespace) -> Settings:
    """The deployment ``carematrix up`` asks for: flags first, then the environment."""
    port = args.port or _env_int("CAREMATRIX_PORT", 8008)
    systems = {
        "fhir_server": args.fhir_server or os.environ.get("CAREMATRIX_FHIR_SERVER"),
        "dicomweb": args.dicomweb or os.environ.get("CAREMATRIX_DICOMWEB"),
        "emr_archive": args.emr_archive or os.environ.get("CAREMATRIX_EMR_ARCHIVE"),
        "systems_token": os.environ.get("CAREMATRIX_SYSTEMS_TOKEN") or None,
    }
    return Settings(
        data_dir=args.data_dir or _default_data_dir(),
        port=port,
        appservice_port=args.appservice_port or _env_int("CAREMATRIX_APPSERVICE_PORT", 0),
        hl7_port=args.hl7_port if args.hl7_port is not None else _env_int("CAREMATRIX_HL7_PORT", 2575),
        **_hl7_limits(args),
        server_name=args.server_name,
        bind_address=args.bind,
        database=args.database,
        db_url=args.db_url,
        # None: the default (Settings), which on a new data dir may be the demo policy's copy.
        policy_dir=args.policy_dir or os.environ.get("CAREMATRIX_POLICY_DIR") or None,
        demo=not args.no_demo,
        audit_syslog=args.audit_syslog or os.environ.get("CAREMATRIX_AUDIT_SYSLOG"),
        **systems,
        # A hospital system named on the command line (or in the environment) wins: the demo
        # EMR and PACS are never mixed with real ones.
        demo_systems=not args.no_demo and not args.no_demo_systems and not any(systems.values()),
        demo_emr_port=args.demo_emr_port or 0,
        demo_pacs_port=args.demo_pacs_port or 0,
        ldap=_ldap_settings(args.ldap_config),
        oidc=_oidc_settings(args.oidc_config),
    )


def cmd_up(args: argparse.Namespace) -> int:
    from carematrix_ops.seed import Seeder, SeedFailed
    from carematrix_ops.supervisor import Stack, StartupFailed

    settings = up_settings(args)
    # Checked before anything is written, so a failed start leaves the data dir as it was.
    check_ports(settings)
    deployment = prepare(settings)
    stack = Stack(deployment)
    print(f"Starting CareMatrix from {settings.data_dir} ({settings.database}) ...", flush=True)
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        stack.start()
        result = Seeder(deployment).run()
    except (StartupFailed, SeedFailed) as exc:
        stack.stop()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (HttpError, OSError) as exc:
        stack.stop()
        print(f"error: setting up the demo hospital failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _print_banner(deployment, result)
    try:
        stack.supervise(lambda: stopping)
    except StartupFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        stack.stop()
        return EXIT_FAILED
    print("Stopping CareMatrix ...", flush=True)
    stack.stop()
    print("CareMatrix stopped.", flush=True)
    return EXIT_OK


def _print_banner(deployment: object, result: object) -> None:
    from carematrix_ops.deploy.settings import Deployment
    from carematrix_ops.seed import SeedResult

    assert isinstance(deployment, Deployment)
    s = deployment.settings
    url = f"http://localhost:{s.port}" if s.bind_address in ("127.0.0.1", "0.0.0.0") else f"http://{s.bind_address}:{s.port}"
    lines = [
        "",
        "CareMatrix is ready.",
        f"  Homeserver URL : {url}",
        f"  Server name    : {s.server_name}",
        f"  Data dir       : {s.data_dir}",
        f"  Policy         : {s.policy_dir} (edit its YAML files; changes apply within a second or two)",
        f"  Bot            : {deployment.bot_user_id} (DM it '!ping', '!oncall')",
    ]
    if s.hl7_port:
        lines.append(f"  HL7 v2 (MLLP)  : {s.hl7_bind}:{s.hl7_port} (senders: see clinical.yaml in the policy)")
    if s.carematrix_enabled:
        lines.append(f"  FHIR R4 input  : {s.appservice_url}/_carematrix/fhir (bearer tokens: fhir_token:<source> in {deployment.paths.secrets})")
        systems = [f"{name} {url}" for name, url in (("FHIR server", s.fhir_server), ("PACS", s.dicomweb), ("EMR archive", s.emr_archive)) if url]
        lines.append("  Case rooms     : '!case open <patient id>'; " + ("; ".join(systems) if systems else "no FHIR server/PACS/EMR connected (--fhir-server, --dicomweb, --emr-archive)"))
        if s.demo_systems:
            lines += _demo_systems_lines(s)
    directory_only = s.ldap is not None and not s.ldap.get("local_passwords", False)
    if s.ldap is not None:
        lines.append(f"  Sign-in        : hospital directory password ({s.ldap.get('uri')})"
                     + ("" if directory_only else "; Synapse passwords also accepted"))
    if s.oidc is not None:
        lines.append(f"  Sign-in        : hospital SSO ({s.oidc.get('idp_name', 'Hospital sign-in')}, "
                     f"{s.oidc.get('issuer')})")
    if isinstance(result, SeedResult) and s.demo:
        policy = load_policy(s.policy_dir)
        if directory_only:
            lines.append("  Staff logins (each with their own directory password):")
        else:
            lines.append(f"  Demo logins (password for all: {deployment.secrets['demo_password']}):")
        for staff in policy.staff:
            roles = f" [{', '.join(sorted(staff.roles))}]" if staff.roles else ""
            lines.append(f"    {staff.localpart:<8} {policy.display_name(staff)}{roles}")
        lines.append(f"  Announcements  : #announcements:{s.server_name}")
    lines += [
        "  Connect Element: Sign in -> Edit homeserver -> " + url + ", then a demo login above.",
        "Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)


def _demo_systems_lines(settings: Settings) -> list[str]:
    """What the demo EMR and PACS hold, and the first thing to try with them."""
    from carematrix_ops.demo import DEMO_ACCESSION, DEMO_PATIENT, demo_patients
    from carematrix_ops.demo.pacs import INSTALL_HINT

    room = f"#cardiology-team:{settings.server_name}"
    lines = [f"  Demo EMR       : patients {', '.join(demo_patients())}; files closed cases"]
    if settings.has_demo_pacs:
        lines.append(f"  Demo PACS      : CT of {DEMO_PATIENT}, accession {DEMO_ACCESSION} (Orthanc)")
        then = f", then in the case room: !images {DEMO_ACCESSION}"
    else:
        lines.append(f"  Demo PACS      : not installed ({INSTALL_HINT})")
        then = ""
    lines.append(f"  Try            : as d1001 in {room}: !case open {DEMO_PATIENT}{then}")
    return lines


def cmd_policy_check(args: argparse.Namespace) -> int:
    directory = _policy_dir(args.path)
    try:
        policy = load_policy(directory)
    except PolicyInvalid as exc:
        for error in exc.errors:
            print(error)
        print(f"policy check failed: {len(exc.errors)} error(s) in {directory}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"OK: {directory}: {len(policy.units)} units, {len(policy.staff)} staff, "
        f"{len(policy.room_classes)} room classes; policy {policy.digest[:12]}"
    )
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    deployment = load_existing(args.data_dir or _default_data_dir())
    s = deployment.settings
    ok = True
    try:
        versions = request_json("GET", f"{s.homeserver_url}/_matrix/client/versions", timeout=5)
        request_json("GET", f"{s.homeserver_url}/health", timeout=5)
        print(f"homeserver  OK    {s.homeserver_url} (spec {versions['versions'][-1]}, {s.database})")
    except (HttpError, OSError, KeyError) as exc:
        ok = False
        print(f"homeserver  DOWN  {s.homeserver_url}: {exc}")
    try:
        health = request_json("GET", f"{s.appservice_url}/_carematrix/health", timeout=5)
        print(f"appservice  OK    {s.appservice_url} (bot {health['bot']}, policy {health['policy_digest'][:12]})")
        for line in health.get("policy_rejected_edit", []):
            print(f"  rejected policy edit: {line}")
        for item in health.get("undelivered", []):
            print(f"  UNDELIVERED {item['type']} {item['control_id']} from {item['source']}: {item['why']}")
    except (HttpError, OSError, KeyError) as exc:
        ok = False
        print(f"appservice  DOWN  {s.appservice_url}: {exc}")
    return EXIT_OK if ok else EXIT_FAILED


def cmd_org_sync(args: argparse.Namespace) -> int:
    from carematrix_ops.seed import Seeder

    deployment = load_existing(args.data_dir or _default_data_dir())
    try:
        report = Seeder(deployment).org_sync(dry_run=args.dry_run)
    except (HttpError, OSError) as exc:
        print(f"error: cannot reach the CareMatrix appservice at {deployment.settings.appservice_url} "
              f"({exc}); is the stack running (make run)?", file=sys.stderr)
        return EXIT_FAILED
    header = "Dry run: these changes would be made" if args.dry_run else "Applied"
    print(f"{header} (policy {report['policy_digest'][:12]}):")
    for line in report["actions"] or ["(nothing to change)"]:
        print(f"  {line}")
    for line in report["errors"]:
        print(f"error: {line}", file=sys.stderr)
    return EXIT_FAILED if report["errors"] else EXIT_OK


def cmd_org_import(args: argparse.Namespace) -> int:
    from carematrix.org.importer import import_staff, parse_mapping

    directory = _policy_dir(args.policy_dir)
    try:
        mapping = parse_mapping(args.map or [])
        text = args.csv.read_text(encoding=args.encoding)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: cannot read {args.csv}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        policy = load_policy(directory)
    except PolicyInvalid as exc:
        print(f"error: the policy in {directory} is invalid; fix it first:\n{exc}", file=sys.stderr)
        return EXIT_FAILED
    result = import_staff(str(args.csv), text, mapping, policy)
    if result.errors:
        for error in result.errors:
            print(error)
        print(f"org import failed: {len(result.errors)} error(s); nothing written", file=sys.stderr)
        return EXIT_FAILED
    if args.out is None:
        sys.stdout.write(result.yaml())
    else:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(result.yaml(), encoding="utf-8")
        tmp.replace(args.out)
        print(f"wrote {len(result.staff)} staff to {args.out}", file=sys.stderr)
    return EXIT_OK


def _audit_db_target(deployment: object) -> str:
    from carematrix_ops.deploy.settings import Deployment

    assert isinstance(deployment, Deployment)
    s = deployment.settings
    return s.db_url if s.database == "postgres" and s.db_url else str(deployment.paths.sqlite_db)


@contextmanager
def _our_tables(deployment: object) -> Iterator[tuple[Any, str]]:
    """A read-only transaction on the homeserver database, for commands that read our tables:
    refused (:class:`SchemaVersionError`, reported by :func:`main`) unless they are at the
    version this code reads. The homeserver upgrades them when it starts; tools never do."""
    from carematrix.hsdb.migrations import require_current
    from carematrix_ops.audit_db import connect

    with connect(_audit_db_target(deployment)) as db, db.transaction(read_only=True) as txn:
        require_current(txn, db.dialect)
        yield txn, db.dialect


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from carematrix.audit.checkpoint import load_verify_keys
    from carematrix.audit.verify import verify

    deployment = load_existing(args.data_dir or _default_data_dir())
    key_file = args.verify_keys or deployment.paths.audit_verify_key
    try:
        keys = load_verify_keys(key_file)
    except OSError as exc:
        print(f"error: cannot read the audit verify key {key_file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    with _our_tables(deployment) as (txn, dialect):
        result = verify(txn, dialect, keys)
    print(result.summary())
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_watermark_trace(args: argparse.Namespace) -> int:
    from carematrix.policy import load_policy
    from carematrix_ops.tracing import trace_leak

    deployment = load_existing(args.data_dir or _default_data_dir())
    try:
        leaked = args.file.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    media_root = deployment.paths.media / "local_content"

    def read_original(media_id: str) -> bytes | None:
        try:
            return (media_root / media_id[:2] / media_id[2:4] / media_id[4:]).read_bytes()
        except OSError:
            return None

    policy = load_policy(deployment.settings.policy_dir)

    def name_of(user_id: str) -> str:
        staff = policy.staff_for_localpart(identity.localpart(user_id))
        return f"{staff.name} ({staff.staff_number})" if staff else user_id

    key = deployment.secrets["watermark_key"].encode()
    with _our_tables(deployment) as (txn, dialect):
        report = trace_leak(leaked, txn, dialect, read_original, key)
    print(report.summary(deployment.settings.server_name, name_of))
    return EXIT_OK if report.delivery is not None else EXIT_FAILED


def cmd_retention_report(args: argparse.Namespace) -> int:
    import time

    from carematrix_ops.audit_db import connect
    from synapse_modules.retention import render, retention_report

    deployment = load_existing(args.data_dir or _default_data_dir())
    now = int(time.time() * 1000)
    with connect(_audit_db_target(deployment)) as db, db.transaction(read_only=True) as txn:
        rows = retention_report(txn, db.dialect, now, args.days * 86_400_000)
    print(render(rows, args.days))
    return EXIT_OK


def _login_token(deployment: object, localpart: str) -> str:
    import getpass

    from carematrix_ops.deploy.settings import Deployment

    assert isinstance(deployment, Deployment)
    password = os.environ.get("CAREMATRIX_PASSWORD") or getpass.getpass(f"password for {localpart}: ")
    resp = request_json(
        "POST",
        f"{deployment.settings.homeserver_url}/_matrix/client/v3/login",
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart}, "password": password},
    )
    return resp["access_token"]


def cmd_audit_search(args: argparse.Namespace) -> int:
    import urllib.request
    from urllib.parse import urlencode

    deployment = load_existing(args.data_dir or _default_data_dir())
    token = args.token or os.environ.get("CAREMATRIX_TOKEN")
    try:
        if not token:
            if not args.login:
                print("error: searching the audit trail needs an auditor's login: --login USER "
                      "(password from CAREMATRIX_PASSWORD or a prompt) or --token", file=sys.stderr)
                return EXIT_USAGE
            token = _login_token(deployment, args.login)
        filters = {k: v for k in ("actor", "room", "patient", "action", "outcome", "since", "until")
                   if (v := getattr(args, k)) is not None}
        filters["limit"] = str(args.limit)
        filters["format"] = args.format
        url = f"{deployment.settings.homeserver_url}/_synapse/client/carematrix/audit/search?{urlencode(filters)}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                sys.stdout.write(resp.read().decode())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            try:
                message = json.loads(body).get("error", body)
            except ValueError:
                message = body
            print(f"error: {message}", file=sys.stderr)
            return EXIT_FAILED
    except (HttpError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carematrix", description="CareMatrix clinical messaging")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="set up (first run) and run the whole stack")
    up.add_argument("--data-dir", type=Path, help="data dir (default $CAREMATRIX_DATA_DIR, or var/ in a checkout)")
    up.add_argument("--port", type=_port, help="homeserver port (default $CAREMATRIX_PORT or 8008)")
    up.add_argument("--appservice-port", type=_port, help="appservice port (default homeserver port + 1)")
    up.add_argument("--hl7-port", type=int, help="MLLP port for HL7 v2 from the HIS (default 2575; 0: off)")
    up.add_argument("--hl7-max-message-bytes", type=_byte_count, metavar="N",
                    help="larger HL7 messages get AR naming the limit (default $CAREMATRIX_HL7_MAX_MESSAGE_BYTES or 1048576)")
    up.add_argument("--hl7-frame-timeout", type=_seconds, metavar="SECONDS",
                    help="an MLLP frame started and not finished this long closes its connection "
                         "(default $CAREMATRIX_HL7_FRAME_TIMEOUT or 30)")
    up.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    up.add_argument("--db-url", help="PostgreSQL URL, e.g. postgresql://synapse@127.0.0.1:5432/carematrix")
    up.add_argument("--server-name", default=os.environ.get("CAREMATRIX_SERVER_NAME", "localhost"))
    up.add_argument("--bind", default="127.0.0.1", help="address the homeserver listens on")
    up.add_argument("--policy-dir", type=Path, help="policies directory (default $CAREMATRIX_POLICY_DIR, else the checkout's policies/, "
                    "else DATA_DIR/policies, a copy of the demo policy made on the first start)")
    up.add_argument("--audit-syslog", metavar="HOST:PORT", help="forward every audit record to this syslog collector (TCP)")
    up.add_argument("--fhir-server", metavar="URL", help="the hospital's FHIR R4 server (patient summaries in case rooms)")
    up.add_argument("--dicomweb", metavar="URL", help="the PACS's DICOMweb root (key images in case rooms)")
    up.add_argument("--emr-archive", metavar="URL", help="FHIR endpoint closed cases are archived to (Bundle + PDF)")
    up.add_argument("--no-demo", action="store_true", help="accounts get no password (sign-in via SSO); no demo logins printed")
    up.add_argument("--no-demo-systems", action="store_true",
                    help="demo mode without the demo EMR and PACS (implied by --no-demo and by "
                         "--fhir-server/--dicomweb/--emr-archive)")
    up.add_argument("--demo-emr-port", type=_port, help="port of the demo EMR (default appservice port + 1)")
    up.add_argument("--demo-pacs-port", type=_port, help="port of the demo PACS (default appservice port + 2)")
    up.add_argument("--ldap-config", type=Path, metavar="FILE",
                    help="staff sign in with the hospital directory (LDAP): YAML settings, see docs/org.md "
                         "(bind password may come from $CAREMATRIX_LDAP_BIND_PASSWORD)")
    up.add_argument("--oidc-config", type=Path, metavar="FILE",
                    help="staff sign in with the hospital's single sign-on (OIDC): YAML settings, see "
                         "docs/org.md (client secret may come from $CAREMATRIX_OIDC_CLIENT_SECRET)")
    up.set_defaults(func=cmd_up)

    policy = sub.add_parser("policy", help="work with policy files")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser("check", help="validate the policy directory")
    check.add_argument("path", nargs="?", type=Path)
    check.set_defaults(func=cmd_policy_check)

    org = sub.add_parser("org", help="the organisation: sync into Matrix, import from HR")
    org_sub = org.add_subparsers(dest="org_command", required=True)
    sync = org_sub.add_parser("sync", help="bring accounts, spaces and rooms in line with the policy")
    sync.add_argument("--dry-run", action="store_true", help="print the changes without making them")
    sync.add_argument("--data-dir", type=Path)
    sync.set_defaults(func=cmd_org_sync)
    imp = org_sub.add_parser("import", help="turn an HR export (CSV) into the staff policy (YAML)")
    imp.add_argument("csv", type=Path)
    imp.add_argument("--map", action="append", metavar="FIELD=COLUMN", help="CSV column for a field (repeatable)")
    imp.add_argument("--out", type=Path, help="write the YAML here (default: standard output)")
    imp.add_argument("--encoding", default="utf-8-sig", help="CSV encoding (default utf-8-sig; e.g. gb18030)")
    imp.add_argument("--policy-dir", type=Path, help="policy whose units and roles rows must use")
    imp.set_defaults(func=cmd_org_import)

    audit = sub.add_parser("audit", help="the tamper-evident audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the hash chain and signed checkpoints")
    verify.add_argument("--data-dir", type=Path)
    verify.add_argument("--verify-keys", type=Path, help="trusted verify keys (default: the deployment's)")
    verify.set_defaults(func=cmd_audit_verify)
    search = audit_sub.add_parser("search", help="search the trail (auditors only; the search is audited)")
    search.add_argument("--data-dir", type=Path)
    search.add_argument("--login", help="auditor's user name (password from CAREMATRIX_PASSWORD or a prompt)")
    search.add_argument("--token", help="auditor's access token (or CAREMATRIX_TOKEN)")
    for name in ("actor", "room", "patient", "action", "outcome", "since", "until"):
        search.add_argument(f"--{name}")
    search.add_argument("--limit", type=int, default=100)
    search.add_argument("--format", choices=["table", "json", "csv", "fhir"], default="table")
    search.set_defaults(func=cmd_audit_search)

    watermark = sub.add_parser("watermark", help="per-viewer image watermarks")
    watermark_sub = watermark.add_subparsers(dest="watermark_command", required=True)
    trace = watermark_sub.add_parser("trace", help="name the viewer a leaked image was rendered for")
    trace.add_argument("file", type=Path, help="the leaked image (photo, screenshot or re-encoded copy)")
    trace.add_argument("--data-dir", type=Path)
    trace.set_defaults(func=cmd_watermark_trace)

    retention = sub.add_parser("retention", help="message lifetimes per room class")
    retention_sub = retention.add_subparsers(dest="retention_command", required=True)
    report = retention_sub.add_parser("report", help="what the purge jobs will delete, per room")
    report.add_argument("--days", type=int, default=7, help="also count what expires within this many days")
    report.add_argument("--data-dir", type=Path)
    report.set_defaults(func=cmd_retention_report)

    status = sub.add_parser("status", help="health of a running stack")
    status.add_argument("--data-dir", type=Path)
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SchemaVersionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
