"""The deployment ``carematrix up`` asks for, from its flags and the environment."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from carematrix_ops.cli.common import default_data_dir
from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.settings import Settings


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise DeployError(f"{name}={raw!r} is not a port number") from None


def port_number(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is not between 1 and 65535")
    return port


def byte_count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of bytes") from None
    if count < 1024:
        raise argparse.ArgumentTypeError(f"{count} is below 1024 bytes")
    return count


def seconds(value: str) -> float:
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
        ("hl7_max_message_bytes", args.hl7_max_message_bytes, "CAREMATRIX_HL7_MAX_MESSAGE_BYTES", byte_count),
        ("hl7_frame_timeout_seconds", args.hl7_frame_timeout, "CAREMATRIX_HL7_FRAME_TIMEOUT", seconds),
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


def ldap_settings(path: Path | None) -> dict | None:
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


def oidc_settings(path: Path | None) -> dict | None:
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
    # None: the default (Settings), which on a new data dir may be the demo policy's copy.
    policy_dir = args.policy_dir or os.environ.get("CAREMATRIX_POLICY_DIR")
    systems: dict[str, str | None] = {
        "fhir_server": args.fhir_server or os.environ.get("CAREMATRIX_FHIR_SERVER"),
        "dicomweb": args.dicomweb or os.environ.get("CAREMATRIX_DICOMWEB"),
        "emr_archive": args.emr_archive or os.environ.get("CAREMATRIX_EMR_ARCHIVE"),
        "systems_token": os.environ.get("CAREMATRIX_SYSTEMS_TOKEN") or None,
    }
    return Settings(
        data_dir=args.data_dir or default_data_dir(),
        port=port,
        appservice_port=args.appservice_port or _env_int("CAREMATRIX_APPSERVICE_PORT", 0),
        hl7_port=args.hl7_port if args.hl7_port is not None else _env_int("CAREMATRIX_HL7_PORT", 2575),
        **_hl7_limits(args),
        server_name=args.server_name,
        bind_address=args.bind,
        database=args.database,
        db_url=args.db_url,
        policy_dir=Path(policy_dir) if policy_dir else None,
        demo=not args.no_demo,
        audit_syslog=args.audit_syslog or os.environ.get("CAREMATRIX_AUDIT_SYSLOG"),
        fhir_server=systems["fhir_server"],
        dicomweb=systems["dicomweb"],
        emr_archive=systems["emr_archive"],
        systems_token=systems["systems_token"],
        # A hospital system named on the command line (or in the environment) wins: the demo
        # EMR and PACS are never mixed with real ones.
        demo_systems=not args.no_demo and not args.no_demo_systems and not any(systems.values()),
        demo_emr_port=args.demo_emr_port or 0,
        demo_pacs_port=args.demo_pacs_port or 0,
        turn_port=args.turn_port if args.turn_port is not None else _env_int("CAREMATRIX_TURN_PORT", 3478),
        turn_host=args.turn_host or os.environ.get("CAREMATRIX_TURN_HOST") or None,
        push_gateway=args.push_gateway or os.environ.get("CAREMATRIX_PUSH_GATEWAY") or None,
        ldap=ldap_settings(args.ldap_config),
        oidc=oidc_settings(args.oidc_config),
        workers=args.workers,
        redis=args.redis or os.environ.get("CAREMATRIX_REDIS") or None,
    )
