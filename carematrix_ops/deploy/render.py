"""The generated configs: every value the templates need, and the templates filled in.

Templates (``carematrix_ops/templates/*.in``) are re-rendered on every ``up``, so template
improvements reach existing installations.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carematrix import identity
from carematrix_ops import resources
from carematrix_ops.deploy import push, turn
from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.files import atomic_write, staged
from carematrix_ops.deploy.modules import synapse_module_configs
from carematrix_ops.deploy.secrets import DEVICE_TOKEN_PREFIX, FHIR_TOKEN_PREFIX, SECRET_KEYS
from carematrix_ops.deploy.settings import BOT_LOCALPART, Deployment, Paths, media_store
from carematrix_ops.deploy.sign_in import password_config, sso_config

if TYPE_CHECKING:
    from carematrix.ldap_login import LdapConfig
    from carematrix_ops.deploy.workers import Layout


def render_template(name: str, values: dict[str, Any]) -> str:
    """Fill ``${key}`` placeholders with JSON (valid YAML) so quoting can never break."""
    text = resources.template(name)
    rendered = {k: json.dumps(v, ensure_ascii=False) for k, v in values.items()}
    try:
        return string.Template(text).substitute(rendered)
    except KeyError as exc:
        raise DeployError(f"config template {name} uses unknown placeholder {exc}") from exc


def config_values(
    deployment: Deployment,
    database: dict[str, Any],
    appservice_database: str,
    ldap: LdapConfig | None,
    oidc: dict[str, Any] | None,
) -> dict[str, Any]:
    """Every placeholder of the templates, from the settings, the paths and the secrets."""
    settings, paths, secret_values = deployment.settings, deployment.paths, deployment.secrets
    server_re = re.escape(settings.server_name)
    relaxed = {"per_second": 1000, "burst_count": 10000}
    values: dict[str, Any] = {
        "server_name": settings.server_name,
        "public_baseurl": settings.public_baseurl or f"http://{'localhost' if settings.bind_address in ('127.0.0.1', '0.0.0.0') else settings.bind_address}:{settings.port}/",
        "pid_file": str(paths.synapse_dir / "homeserver.pid"),
        "port": settings.port,
        "bind_addresses": [settings.bind_address],
        "x_forwarded": False,
        "database": database,
        "log_config": str(paths.log_config),
        "media_store_path": str(media_store(settings, paths)),
        "signing_key_path": str(paths.signing_key),
        "appservice_files": [str(paths.registration)] if settings.carematrix_enabled else [],
        "modules": synapse_module_configs(
            settings, paths, deployment.bot_user_id, secret_values["as_token"], secret_values["watermark_key"],
            deployment.admin_user_id, secret_values["admin_password"], turn.probe(deployment),
        ),
        "password_config": password_config(ldap),
        "oidc_providers": [oidc] if oidc else [],
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
        # Synapse's default lets one user search the directory 200 times, then once a minute.
        "rc_user_directory": relaxed if settings.relaxed_rate_limits else {"per_second": 0.016, "burst_count": 200},
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
        "appservice_host": settings.appservice_host,
        "appservice_port": settings.appservice_port,
        "appservice_database": appservice_database,
        "appservice_log_file": str(paths.appservice_log),
        # With the directory deciding alone, new accounts get no local password: one shared
        # demo password would open every account if the local database were switched on again.
        "initial_password": (
            secret_values["demo_password"] if settings.demo and password_config(ldap)["localdb_enabled"] else None
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
        "turn_uris": turn.turn_uris(settings),
        **push.homeserver_values(settings),
        "device_token_hashes": {
            key[len(DEVICE_TOKEN_PREFIX):]: hashlib.sha256(value.encode()).hexdigest()
            for key, value in secret_values.items() if key.startswith(DEVICE_TOKEN_PREFIX)
        },
        "voice_enabled": settings.voice and settings.carematrix_enabled,
        "voice_cache_dir": str(settings.voice_model_cache or paths.voice_models),
    }
    values["sso"] = sso_config(settings, values["public_baseurl"])
    for key in SECRET_KEYS:
        values[key] = secret_values[key]
    return values


def write_configs(
    paths: Paths, values: dict[str, Any], parts: Collection[str] = ("synapse", "appservice"),
    destdir: Path | None = None,
) -> None:
    """Synapse's and the appservice's configs; those holding secrets readable by the owner
    only. ``parts``: the configs of Synapse (its own, its log's and the appservice
    registration it reads) and of the appservice; a machine of a layout over several gets
    only what it runs, written below ``destdir``."""
    rendered = []
    if "synapse" in parts:
        rendered += [
            (paths.homeserver_config, render_template("homeserver.yaml.in", values), 0o600),
            (paths.log_config, render_template("log.yaml.in", values), 0o644),
            (paths.registration, render_template("registration.yaml.in", values), 0o600),
        ]
    if "appservice" in parts:
        rendered.append((paths.appservice_config, render_template("appservice.yaml.in", values), 0o600))
    for path, text, mode in rendered:
        atomic_write(staged(path, destdir), text, mode)


def write_worker_configs(
    layout: Layout, paths: Paths, values: dict[str, Any], names: Collection[str] | None = None,
    nginx: str | None = None, own_redis: bool = False, destdir: Path | None = None,
) -> None:
    """The worker deployment's configs (carematrix_ops/deploy/workers.py): the shared
    settings, one file and one log config per worker (of ``names``, default all), and the
    reverse proxy's (``nginx``, when this machine runs it); below ``destdir`` when they are
    for another machine."""
    import yaml

    from carematrix_ops.deploy import workers

    workers.prepare_dirs(paths, own_redis=own_redis, destdir=destdir)

    def dump(data: dict[str, Any]) -> str:
        header = "# Rendered by carematrix on every start or render; edits are overwritten.\n"
        return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    atomic_write(staged(workers.shared_config(paths), destdir), dump(workers.shared_values(layout)), 0o600)
    for worker in layout.topology:
        if names is not None and worker.name not in names:
            continue
        atomic_write(staged(workers.worker_config(paths, worker.name), destdir),
                     dump(workers.worker_values(layout, paths, worker)), 0o600)
        log_values = {**values, "log_file": str(workers.worker_log(paths, worker.name))}
        atomic_write(staged(workers.worker_log_config(paths, worker.name), destdir),
                     render_template("log.yaml.in", log_values), 0o644)
    if nginx is not None:
        atomic_write(staged(workers.proxy_config(paths), destdir), nginx, 0o644)
