"""``deployment.json``: what ``up`` was asked for, without the secrets, for ``status`` and
the other commands, and the guard against switching a data dir to another database."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.files import atomic_write
from carematrix_ops.deploy.settings import Deployment, Paths, Settings


def record_deployment(settings: Settings, paths: Paths) -> None:
    """Refuse to silently switch an existing data dir to another database, or to run one
    machine of a layout over several as a deployment of its own."""
    if paths.deployment.exists():
        try:
            old = json.loads(paths.deployment.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("hosts_file"):
            raise DeployError(
                f"data dir {paths.root} is machine '{old.get('host')}' of the layout in {old['hosts_file']} "
                "(carematrix deploy); its processes are started by systemd (carematrix.target), not by "
                "carematrix up — see docs/scale.md"
            )
        if old.get("database") and old.get("database") != settings.database:
            raise DeployError(
                f"data dir {paths.root} holds a {old['database']} deployment; run with "
                f"--database {old['database']} or use another --data-dir"
            )
    atomic_write(paths.deployment, deployment_record(settings), 0o600)


def deployment_record(settings: Settings) -> str:
    """``deployment.json``'s text: the settings, without the secrets."""
    record = {"database": settings.database, "db_url": settings.db_url}
    full = {**asdict(settings), **record}
    full = {k: str(v) if isinstance(v, Path) else v for k, v in full.items()}
    full.pop("systems_token", None)
    if isinstance(full.get("ldap"), dict):
        # Tooling reads this file; the directory's service password is only in homeserver.yaml.
        full["ldap"] = {k: v for k, v in full["ldap"].items() if k != "bind_password"}
    if isinstance(full.get("oidc"), dict):
        # Likewise the IdP's client secret.
        full["oidc"] = {k: v for k, v in full["oidc"].items() if k != "client_secret"}
    return json.dumps(full, indent=2) + "\n"


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
