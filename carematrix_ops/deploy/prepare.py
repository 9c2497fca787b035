"""``carematrix up``'s preparation: validate everything, then write the data dir."""

from __future__ import annotations

import re

from carematrix_ops.deploy import push, turn
from carematrix_ops.deploy.checks import check_data_dir, ensure_policy_dir
from carematrix_ops.deploy.demo_systems import connect_demo_systems
from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.postgres import database_values
from carematrix_ops.deploy.record import record_deployment
from carematrix_ops.deploy.render import config_values, write_configs, write_worker_configs
from carematrix_ops.deploy.secrets import (
    DEVICE_TOKEN_PREFIX,
    FHIR_TOKEN_PREFIX,
    ensure_signing_key,
    load_or_create_secrets,
)
from carematrix_ops.deploy.settings import Deployment, Paths, Settings
from carematrix_ops.deploy.sign_in import ldap_config, oidc_provider
from carematrix_ops.deploy.workers import check_workers, local_layout, local_nginx_conf


def prepare(settings: Settings) -> Deployment:
    """Validate inputs, then write everything; nothing is written if validation fails."""
    from carematrix.policy import PolicyInvalid, load_policy

    if settings.database not in ("sqlite", "postgres"):
        raise DeployError(f"--database must be sqlite or postgres, got {settings.database!r}")
    if not re.match(r"^[A-Za-z0-9.-]+(:[0-9]+)?$", settings.server_name):
        raise DeployError(f"server name {settings.server_name!r} is not a valid host name")
    ldap = ldap_config(settings)
    if settings.push_gateway:
        push.gateway_addresses(settings.push_gateway)  # refused before anything is written
    oidc = oidc_provider(settings)
    ensure_policy_dir(settings)
    try:
        policy = load_policy(settings.policy_path)
    except PolicyInvalid as exc:
        raise DeployError(
            f"the policy in {settings.policy_dir} is invalid; fix it (carematrix policy check):\n{exc}"
        ) from exc
    connect_demo_systems(settings)
    check_data_dir(settings.data_dir)
    paths = Paths(settings.data_dir)
    if settings.workers:
        check_workers(settings, paths)
    database, appservice_database = database_values(settings, paths)
    record_deployment(settings, paths)
    for d in (paths.synapse_dir, paths.appservice_dir, paths.media, paths.logs):
        d.mkdir(parents=True, exist_ok=True)
    sources = sorted((policy.clinical.fhir_sources or {}) if policy.clinical else {})
    devices = [d.id for d in policy.devices.devices.values() if d.generated_token] if policy.devices else []
    secret_values = load_or_create_secrets(
        paths, [FHIR_TOKEN_PREFIX + name for name in sources] + [DEVICE_TOKEN_PREFIX + name for name in devices]
    )
    ensure_signing_key(paths)
    deployment = Deployment(settings, paths, secret_values)
    values = config_values(deployment, database, appservice_database, ldap, oidc)
    write_configs(paths, values)
    turn.write_config(deployment)
    if settings.workers:
        write_worker_configs(
            local_layout(settings, paths), paths, values, nginx=local_nginx_conf(settings, paths),
            own_redis=not settings.redis,
        )
    if settings.has_demo_pacs:
        from carematrix_ops.demo.pacs import write_config

        write_config(paths.demo_pacs, settings.demo_pacs_port)
    return deployment
