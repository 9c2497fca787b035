"""``carematrix deploy render``: a worker deployment spread over several machines, rendered
from a hosts file (carematrix_ops/deploy/hosts.py) into one tree per machine.

Each machine's tree is what its root file system gets (``rsync -a OUT/core/ core:/``): its
data dir with the configs of the processes it runs — the same homeserver, worker, proxy and
appservice configs ``carematrix up`` renders for one machine (carematrix_ops/deploy/render.py,
workers.py), with the processes listening on the machine's address instead of UNIX sockets
— the keys and secrets those need, and its systemd units in ``/etc/systemd/system``.

The secrets and keys are made once and kept in ``OUT/secrets``: rendering again (a changed
hosts file, a new CareMatrix) reuses them, so sessions, tokens and the audit chain's
signatures stay valid.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from carematrix_ops.deploy import workers
from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.files import atomic_write, staged
from carematrix_ops.deploy.hosts import (
    EXTRA_SECRETS,
    SYNAPSE_ROLES,
    Host,
    HostsFile,
    Process,
    read_hosts,
)
from carematrix_ops.deploy.settings import Deployment, Paths, Settings
from carematrix_ops.deploy.units import TARGET, UNIT_DIR, Unit, render_target, render_unit

HOSTS_COPY = "hosts.yaml"  # the hosts file, in every machine's data dir (`carematrix status`)
# On a machine facing many clients nginx needs more than `up`'s one worker and 4,096
# connections: each client's long-polling /sync holds two.
PROXY_WORKER_CONNECTIONS = 16384


@dataclass
class Rendered:
    hosts: HostsFile
    out: Path
    # Per machine: (process name, what it listens on) in start order.
    listening: dict[str, list[tuple[str, str]]]


def host_settings(hf: HostsFile, host: Host) -> Settings:
    """The deployment settings of one machine (its deployment.json)."""
    from carematrix_ops.cli.up_settings import ldap_settings, oidc_settings

    proxy, appservice = hf.where("proxy"), hf.where("appservice")
    return Settings(
        data_dir=host.data_dir,
        port=hf.ports["proxy"],
        appservice_port=hf.ports["appservice"],
        server_name=hf.server_name,
        bind_address=host.address,
        database="postgres",
        db_url=hf.database,
        policy_dir=hf.policy_dir,
        demo=hf.demo,
        demo_systems=False,
        hl7_port=hf.ports["hl7"],
        hl7_bind=appservice.address,
        turn_port=0,
        ldap=ldap_settings(hf.ldap_config),
        oidc=oidc_settings(hf.oidc_config),
        workers=True,
        redis=hf.redis_address(),
        voice_model_cache=hf.voice_models,
        hosts_file=str(host.data_dir / HOSTS_COPY),
        host=host.name,
        homeserver_host=proxy.address,
        appservice_host=appservice.address,
        public_baseurl=hf.public_baseurl or f"http://{workers.netloc(proxy.address, hf.ports['proxy'])}/",
        media_store=str(hf.media_store),
    )


def render(hosts_path: Path, out: Path) -> Rendered:
    """Check the hosts file and the policy, then write every machine's tree below ``out``."""
    from carematrix.audit.checkpoint import export_verify_key, load_or_create_signing_key
    from carematrix.policy import PolicyInvalid, load_policy
    from carematrix_ops.deploy.postgres import (
        APPSERVICE_DB_CONNECTIONS,
        check_connections,
        database_values,
    )
    from carematrix_ops.deploy.record import deployment_record
    from carematrix_ops.deploy.render import config_values, write_configs, write_worker_configs
    from carematrix_ops.deploy.secrets import (
        DEVICE_TOKEN_PREFIX,
        FHIR_TOKEN_PREFIX,
        ensure_signing_key,
        load_or_create_secrets,
    )
    from carematrix_ops.deploy.sign_in import ldap_config, oidc_provider

    hf = read_hosts(hosts_path)
    python = hf.python or sys.executable
    if not hf.policy_dir.is_dir():
        raise DeployError(
            f"{hosts_path}: the shared policy directory {hf.policy_dir} is not on this machine; render where it is "
            "mounted (the policy decides the secrets of FHIR sources and devices)"
        )
    try:
        policy = load_policy(hf.policy_dir)
    except PolicyInvalid as exc:
        raise DeployError(f"the policy in {hf.policy_dir} is invalid; fix it (carematrix policy check):\n{exc}") from exc
    first = host_settings(hf, hf.hosts[0])
    # Checked (LDAP, OIDC) before anything is written.
    ldap, oidc = ldap_config(first), oidc_provider(first)
    synapse = sum(p.role in SYNAPSE_ROLES for p in hf.processes)
    try:
        check_connections(hf.database, hf.db_connections, f"this layout ({synapse} Synapse processes x db_pool "
                          f"{hf.db_pool}, the appservice {APPSERVICE_DB_CONNECTIONS})", "lower db_pool")
    except DeployError as exc:
        raise DeployError(f"{hosts_path}: {exc}") from None
    # The databases, created if missing (as `carematrix up` does), once for every machine.
    database, appservice_database = database_values(first, Paths(hf.hosts[0].data_dir))
    database = {**database, "args": {**database["args"], "cp_min": min(2, hf.db_pool), "cp_max": hf.db_pool}}
    keep = Paths(out / "secrets")
    sources = sorted((policy.clinical.fhir_sources or {}) if policy.clinical else {})
    devices = [d.id for d in policy.devices.devices.values() if d.generated_token] if policy.devices else []
    secret_values = load_or_create_secrets(
        keep, [*EXTRA_SECRETS, *(FHIR_TOKEN_PREFIX + s for s in sources), *(DEVICE_TOKEN_PREFIX + d for d in devices)]
    )
    ensure_signing_key(keep)
    audit_key = load_or_create_signing_key(keep.audit_signing_key)
    if not keep.audit_verify_key.exists():
        atomic_write(keep.audit_verify_key, export_verify_key(audit_key) + "\n", 0o644)
    layout = hf.layout(secret_values)
    listening: dict[str, list[tuple[str, str]]] = {}
    for host in hf.hosts:
        settings = host_settings(hf, host)
        paths = Paths(host.data_dir)
        stage = out / host.name
        if stage.exists():
            shutil.rmtree(stage)  # a machine's tree is rendered whole: nothing stale survives
        processes = hf.on(host)
        roles = {p.role for p in processes}
        values = config_values(Deployment(settings, paths, secret_values), database, appservice_database, ldap, oidc)
        runs_synapse = bool(roles & set(SYNAPSE_ROLES))
        if runs_synapse or "appservice" in roles:
            parts = [p for p, wanted in (("synapse", runs_synapse), ("appservice", "appservice" in roles)) if wanted]
            write_configs(paths, values, parts, destdir=stage)
            atomic_write(staged(paths.deployment, stage), deployment_record(settings), 0o600)
            shutil.copy2(keep.secrets, staged(paths.secrets, stage))
            shutil.copy2(hosts_path, staged(paths.root / HOSTS_COPY, stage))
            shutil.copy2(keep.audit_verify_key, staged(paths.audit_verify_key, stage))
            for d in (paths.logs, paths.appservice_dir):
                staged(d, stage).mkdir(parents=True, exist_ok=True)
        if runs_synapse:
            write_worker_configs(layout, paths, values, names=[p.name for p in processes], destdir=stage)
            shutil.copy2(keep.signing_key, staged(paths.signing_key, stage))
            shutil.copy2(keep.audit_signing_key, staged(paths.audit_signing_key, stage))
        if "proxy" in roles:
            pdir = workers.proxy_dir(paths)
            staged(pdir / "tmp", stage).mkdir(parents=True, exist_ok=True)
            conf = workers.nginx_conf(
                layout, pdir, workers.netloc(host.address, hf.ports["proxy"]), worker_processes="auto",
                worker_connections=PROXY_WORKER_CONNECTIONS,
            )
            atomic_write(staged(workers.proxy_config(paths), stage), conf, 0o644)
        if "redis" in roles:
            atomic_write(staged(redis_conf_path(paths), stage), redis_conf(hf, host, paths, secret_values), 0o600)
        units = host_units(hf, host, python)
        for unit in units:
            atomic_write(stage / UNIT_DIR.relative_to("/") / unit.file_name, render_unit(unit, hf.user), 0o644)
        atomic_write(stage / UNIT_DIR.relative_to("/") / TARGET, render_target(host.name, units), 0o644)
        listening[host.name] = [(p.name, _listens(hf, p)) for p in processes]
    return Rendered(hf, out, listening)


def _listens(hf: HostsFile, p: Process) -> str:
    ports = hf.synapse_ports()
    if p.name in ports:
        public, repl = ports[p.name]
        return f"{workers.netloc(p.host.address, public)} (replication {repl})"
    if p.role == "appservice":
        hl7 = f", HL7 {hf.ports['hl7']}" if hf.ports["hl7"] else ""
        return f"{workers.netloc(p.host.address, hf.ports['appservice'])}{hl7}"
    return workers.netloc(p.host.address, hf.ports[p.role.rstrip("0123456789")])


def redis_conf_path(paths: Paths) -> Path:
    return workers.redis_dir(paths) / "redis.conf"


def redis_conf(hf: HostsFile, host: Host, paths: Paths, secret_values: dict[str, str]) -> str:
    """Redis for replication between machines: on the machine's address, a password, nothing
    kept on disk (Synapse keeps nothing in Redis that must survive a restart)."""
    return "\n".join([
        "# Rendered by `carematrix deploy render`; edits are overwritten by the next render.",
        f"bind {host.address}",
        f"port {hf.ports['redis']}",
        f"requirepass {secret_values[workers.REDIS_PASSWORD]}",
        f"dir {workers.redis_dir(paths)}",
        'save ""',
        "appendonly no",
        "daemonize no",
        'logfile ""',
        "",
    ])


def host_units(hf: HostsFile, host: Host, python: str) -> list[Unit]:
    """The systemd units of one machine, in the order they start: Redis, the main process,
    the workers, the proxy, the appservice and its one-off seed."""
    paths = Paths(host.data_dir)
    units: list[Unit] = []
    for p in hf.on(host):
        name = f"carematrix-{'synapse-' if p.role in SYNAPSE_ROLES else ''}{p.name}"
        started = [u.name for u in units]
        if p.role == "redis":
            argv = [workers.redis_binary() or "/usr/bin/redis-server", str(redis_conf_path(paths))]
            units.append(Unit(name, "Redis (replication between the Synapse processes)", argv, workers.redis_dir(paths)))
        elif p.role in SYNAPSE_ROLES:
            # A worker after the main process of its machine (which migrates the schema).
            after = [u for u in started if u in ("carematrix-redis", "carematrix-synapse-main")]
            units.append(Unit(name, f"Synapse {p.name}", workers.synapse_argv(python, paths, p.name),
                              paths.synapse_dir, after))
        elif p.role == "proxy":
            units.append(Unit(name, "reverse proxy (nginx)", _nginx_argv(paths), workers.proxy_dir(paths), started,
                              reload_signal="HUP", low_port=hf.ports["proxy"] < 1024))
        elif p.role == "appservice":
            low = 0 < hf.ports["hl7"] < 1024 or hf.ports["appservice"] < 1024
            units.append(Unit(name, "appservice", [python, "-m", "appservice", "-c", str(paths.appservice_config)],
                              paths.appservice_dir, started, low_port=low))
            units.append(Unit(
                "carematrix-seed", "first start: admin account, bot, org sync (harmless when repeated)",
                [python, "-m", "carematrix_ops.cli", "deploy", "seed", "--data-dir", str(paths.root)],
                paths.root, [name], oneshot=True,
            ))
    return units


def _nginx_argv(paths: Paths) -> list[str]:
    argv = workers.nginx_argv(paths)
    if not argv[0].startswith("/"):
        argv[0] = "/usr/sbin/nginx"
    return argv


def summary(rendered: Rendered) -> str:
    """What `carematrix deploy render` prints: which processes run where, and what next."""
    hf, out = rendered.hosts, rendered.out
    lines = [f"Rendered {len(hf.hosts)} machines for {hf.server_name} into {out}:"]
    for host in hf.hosts:
        lines.append(f"  {host.name} ({host.address}, data dir {host.data_dir}):")
        for name, where in rendered.listening[host.name]:
            lines.append(f"    {name:<12} {where}")
    first = hf.where("main").name
    lines += [
        "",
        "Install each machine's tree at its root (e.g. rsync -a "
        f"{out}/{hf.hosts[0].name}/ root@{hf.hosts[0].address}:/), then on each: "
        f"chown -R {hf.user}: <data dir>; systemctl daemon-reload; systemctl enable --now {TARGET}",
        f"  starting with {first} (the main process brings the database schema up to date).",
        f"Keep {out / 'secrets'}: a later render reuses its secrets and keys.",
        f"PostgreSQL: up to {hf.db_connections} connections from these processes (db_pool {hf.db_pool} per Synapse process).",
        f"Shared by every machine: {hf.policy_dir} (policy) and {hf.media_store} (media store).",
    ]
    return "\n".join(lines)
