"""The hosts file of ``carematrix deploy``: which processes of a worker deployment run on
which machine (docs/scale.md).

One small YAML file describes a layout over several machines; ``carematrix deploy render``
turns it into each machine's files (carematrix_ops/deploy/multihost.py). What a process does
is its role; a role listed twice is two processes::

    server_name: renhe.example
    database: postgresql://synapse@10.20.0.5:5432/carematrix
    shared:                           # every machine mounts these (NFS or a synced copy)
      policy_dir: /srv/carematrix-shared/policies
      media_store: /srv/carematrix-shared/media
    hosts:
      core:
        address: 10.20.0.10
        runs: [proxy, main, appservice, redis, background, writer]
      app1:
        address: 10.20.0.11
        runs: [client, client, events, media]

Between machines the Synapse processes listen on their machine's address: process *k* of a
machine's ``runs`` (counting Synapse processes only) on ``ports.synapse + 2k`` for the
proxy and ``+ 2k + 1`` for replication. Names are numbered in file order (``client1``,
``client2``, ... across all machines).

Every mistake is reported as ``file:line: what is wrong``, all of them at once, before
anything is written.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carematrix.policy.errors import PolicyError
from carematrix.policy.yamlsrc import LineDict, LineList, YamlSyntaxError, parse_yaml
from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.postgres import APPSERVICE_DB_CONNECTIONS, SYNAPSE_DB_CONNECTIONS
from carematrix_ops.deploy.workers import (
    MAIN,
    MEDIA_STORE,
    REDIS_PASSWORD,
    Layout,
    Listen,
    Worker,
    parse_redis,
)

# What each role is, in the order `carematrix deploy render` lists a machine's processes.
ROLES: dict[str, str] = {
    "redis": "Redis, which the Synapse processes replicate over",
    "main": "the main Synapse process (admin API, our modules' endpoints, presence, push rules)",
    "client": "a generic worker: client API and /sync (a client sticks to one by its access token)",
    "events": "an event persister (rooms are spread over them by room ID)",
    "writer": "the writer of typing, to-device messages and receipts",
    "media": "a media worker: uploads and downloads, through the watermarking gate",
    "background": "background tasks (burns, audit checkpoints, retention), pushers, the appservice "
                  "notifier, the user directory",
    "proxy": "nginx on the public port: every endpoint to the process that serves it",
    "appservice": "the CareMatrix appservice (org sync, on-call, HL7 and FHIR, voice)",
}
SYNAPSE_ROLES = ("main", "client", "events", "writer", "media", "background")
# How many processes of a role a layout has: (at least, at most; None: any number).
COUNTS: dict[str, tuple[int, int | None]] = {
    "main": (1, 1), "appservice": (1, 1), "proxy": (1, None), "client": (1, None), "media": (1, None),
    "events": (0, None), "writer": (0, 1), "background": (0, 1), "redis": (0, 1),
}
TOP_KEYS = {
    "server_name", "public_baseurl", "database", "redis", "data_dir", "shared", "python", "user", "ports",
    "demo", "voice_models", "ldap_config", "oidc_config", "db_pool", "hosts",
}
PORT_KEYS = {"proxy": 8008, "appservice": 8009, "hl7": 2575, "redis": 6379, "synapse": 8100}
HOST_KEYS = {"address", "runs", "data_dir"}
SHARED_KEYS = {"policy_dir", "media_store"}
DEFAULT_DATA_DIR = "/srv/carematrix"
DEFAULT_USER = "carematrix"
DEFAULT_DB_POOL = SYNAPSE_DB_CONNECTIONS
# Secrets a layout over several machines adds to the deployment's (secrets.json).
REPLICATION_SECRET = "worker_replication_secret"
EXTRA_SECRETS = (REPLICATION_SECRET, REDIS_PASSWORD)
_HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    data_dir: Path
    runs: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class Process:
    """One process of the layout, on its machine."""

    name: str  # "main", "client1", "proxy", "appservice", "redis", ...
    role: str
    host: Host


@dataclass
class HostsFile:
    path: Path
    server_name: str
    database: str
    policy_dir: Path
    media_store: Path
    hosts: list[Host]
    ports: dict[str, int]
    public_baseurl: str | None = None
    redis: str | None = None  # an existing Redis (host:port); None: a host runs `redis`
    python: str | None = None
    user: str = DEFAULT_USER
    demo: bool = False
    voice_models: str | None = None
    ldap_config: Path | None = None
    oidc_config: Path | None = None
    db_pool: int = DEFAULT_DB_POOL
    processes: list[Process] = field(default_factory=list)

    @property
    def db_connections(self) -> int:
        """How many connections the layout's processes may hold open to PostgreSQL."""
        synapse = sum(p.role in SYNAPSE_ROLES for p in self.processes)
        return synapse * self.db_pool + APPSERVICE_DB_CONNECTIONS

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def on(self, host: Host) -> list[Process]:
        return [p for p in self.processes if p.host == host]

    def where(self, role: str) -> Host:
        """The (first) machine running ``role``."""
        return next(p.host for p in self.processes if p.role == role)

    @property
    def synapse_hosts(self) -> list[Host]:
        return [h for h in self.hosts if any(r in SYNAPSE_ROLES for r in h.runs)]

    def redis_address(self) -> str:
        """``host:port`` of the Redis every Synapse process replicates over."""
        if self.redis:
            return self.redis
        return _netloc(self.where("redis").address, self.ports["redis"])

    def topology(self) -> tuple[Worker, ...]:
        """The workers, in file order, as the one-machine topology describes its own."""
        out: list[Worker] = []
        media_jobs = False
        for p in self.processes:
            if p.role == "client":
                out.append(Worker(p.name, ("client",), extra=MEDIA_STORE))
            elif p.role == "events":
                out.append(Worker(p.name, (), streams=("events",)))
            elif p.role == "writer":
                out.append(Worker(p.name, ("client",), streams=("typing", "to_device", "receipts"), routes=()))
            elif p.role == "media":
                out.append(Worker(p.name, ("media",), duties=() if media_jobs else ("media_jobs",), extra=MEDIA_STORE))
                media_jobs = True
            elif p.role == "background":
                out.append(Worker(p.name, (), duties=("background", "pusher", "appservice", "user_directory"),
                                  extra=MEDIA_STORE))
        return tuple(out)

    def synapse_ports(self) -> dict[str, tuple[int, int]]:
        """Each Synapse process's (public, replication) port on its machine."""
        ports: dict[str, tuple[int, int]] = {}
        for host in self.hosts:
            k = 0
            for p in self.on(host):
                if p.role in SYNAPSE_ROLES:
                    base = self.ports["synapse"] + 2 * k
                    ports[p.name] = (base, base + 1)
                    k += 1
        return ports

    def layout(self, secrets: dict[str, str]) -> Layout:
        """The worker deployment this file describes: every Synapse process on its machine's
        address, the replication secret, Redis."""
        topology = self.topology()
        ports = self.synapse_ports()
        address = {p.name: p.host.address for p in self.processes}
        public = {name: Listen(host=address[name], port=ports[name][0]) for name in ports}
        replication = {
            name: Listen(host=address[name], port=ports[name][1])
            for name in [MAIN, *(w.name for w in topology if w.has_replication)]
        }
        host, port = parse_redis(self.redis_address())
        redis: dict[str, Any] = {"enabled": True, "host": host, "port": port}
        if not self.redis:
            redis["password"] = secrets[REDIS_PASSWORD]
        return Layout(topology, public, replication, redis, replication_secret=secrets[REPLICATION_SECRET])


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Errors:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.found: list[PolicyError] = []

    def add(self, line: int, message: str) -> None:
        self.found.append(PolicyError(str(self.path), line, message))


def _valid_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return bool(_DNS_NAME.match(value))


def _absolute(value: Any, what: str, line: int, errors: _Errors) -> Path | None:
    if not isinstance(value, str) or not value.strip():
        errors.add(line, f"{what} must be a path")
        return None
    if not value.startswith("/"):
        errors.add(line, f"{what} must be an absolute path (where it is on the machines), got {value!r}")
        return None
    return Path(value)


def _unknown(mapping: LineDict, known: set[str], where: str, errors: _Errors) -> None:
    for key in mapping:
        if key not in known:
            errors.add(mapping.line_of(key), f"unknown key '{key}' in {where} (expected one of: {', '.join(sorted(known))})")


def read_hosts(path: Path, check_files: bool = True) -> HostsFile:
    """Read and check a hosts file; a DeployError lists every mistake as ``file:line: ...``.
    ``check_files`` False: the sign-in files it names are not looked for (a machine's copy
    of the file, read for its layout)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeployError(f"cannot read the hosts file {path}: {exc.strerror}") from exc
    errors = _Errors(path)
    try:
        raw = parse_yaml(text)
    except YamlSyntaxError as exc:
        raise DeployError(f"{path}:{exc.line}: {exc.message}") from exc
    if not isinstance(raw, LineDict):
        raise DeployError(f"{path}:1: the hosts file must be a mapping with server_name, database, shared and hosts")
    hf = _read(path, raw, errors, check_files)
    if errors.found or hf is None:
        raise DeployError("\n".join(str(e) for e in sorted(errors.found)))
    return hf


def _read(path: Path, raw: LineDict, errors: _Errors, check_files: bool) -> HostsFile | None:
    from carematrix_ops.deploy.postgres import parse_db_url

    _unknown(raw, TOP_KEYS, "the hosts file", errors)
    for key in ("server_name", "database", "shared", "hosts"):
        if key not in raw:
            errors.add(raw.line, f"missing '{key}'")
    server_name = raw.get("server_name")
    if "server_name" in raw and (not isinstance(server_name, str) or not re.match(r"^[A-Za-z0-9.-]+(:[0-9]+)?$", server_name)):
        errors.add(raw.line_of("server_name"), f"server_name must be a host name (e.g. renhe.example), got {server_name!r}")
    database = raw.get("database")
    if "database" in raw:
        try:
            if not isinstance(database, str):
                raise DeployError("database must be a PostgreSQL URL")
            parse_db_url(database)
        except DeployError as exc:
            errors.add(raw.line_of("database"), str(exc).replace("--db-url", "database"))
    baseurl = raw.get("public_baseurl")
    if baseurl is not None and (not isinstance(baseurl, str) or not re.match(r"^https?://[^/\s]+/?$", baseurl)):
        errors.add(raw.line_of("public_baseurl"), f"public_baseurl must be the URL clients use, like https://matrix.renhe.example/, got {baseurl!r}")
    redis = raw.get("redis")
    if redis is not None and (not isinstance(redis, str) or not re.match(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$", redis)):
        errors.add(raw.line_of("redis"), f"redis must be HOST:PORT of an existing Redis (e.g. 10.20.0.6:6379), got {redis!r}")
    ports = dict(PORT_KEYS)
    given_ports = raw.get("ports")
    if given_ports is not None:
        if not isinstance(given_ports, LineDict):
            errors.add(raw.line_of("ports"), "ports must be a mapping (proxy, appservice, hl7, redis, synapse)")
        else:
            _unknown(given_ports, set(PORT_KEYS), "ports", errors)
            for key, value in given_ports.items():
                low = 0 if key == "hl7" else 1
                if key in PORT_KEYS and (not isinstance(value, int) or isinstance(value, bool) or not low <= value < 65536):
                    errors.add(given_ports.line_of(key), f"ports.{key} must be a port number{' (0: off)' if key == 'hl7' else ''}, got {value!r}")
                elif key in PORT_KEYS:
                    ports[key] = value
    for key in ("demo",):
        if key in raw and not isinstance(raw[key], bool):
            errors.add(raw.line_of(key), f"{key} must be true or false")
    db_pool = raw.get("db_pool", DEFAULT_DB_POOL)
    if not isinstance(db_pool, int) or isinstance(db_pool, bool) or not 1 <= db_pool <= 100:
        errors.add(raw.line_of("db_pool"), f"db_pool must be the database connections per Synapse process (1-100), got {db_pool!r}")
    for key in ("python", "user"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key].strip()):
            errors.add(raw.line_of(key), f"{key} must be text")
    python = raw.get("python")
    if isinstance(python, str) and not python.startswith("/"):
        errors.add(raw.line_of("python"), f"python must be the absolute path of the Python with CareMatrix installed on the machines, got {python!r}")
    default_data_dir = _absolute(raw.get("data_dir", DEFAULT_DATA_DIR), "data_dir", raw.line_of("data_dir"), errors)
    voice_models = raw.get("voice_models")
    if voice_models is not None:
        _absolute(voice_models, "voice_models", raw.line_of("voice_models"), errors)
    sign_in: dict[str, Path | None] = {}
    for key in ("ldap_config", "oidc_config"):
        value = raw.get(key)
        sign_in[key] = None
        if value is not None:
            if not isinstance(value, str):
                errors.add(raw.line_of(key), f"{key} must be the path of a file")
                continue
            file = (path.parent / value).resolve()
            if check_files and not file.is_file():
                errors.add(raw.line_of(key), f"{key}: no such file {file}")
            sign_in[key] = file
    policy_dir = media = None
    shared = raw.get("shared")
    if "shared" in raw:
        if not isinstance(shared, LineDict):
            errors.add(raw.line_of("shared"), "shared must be a mapping with policy_dir and media_store")
        else:
            _unknown(shared, SHARED_KEYS, "shared", errors)
            for key in sorted(SHARED_KEYS):
                if key not in shared:
                    errors.add(shared.line, f"shared: missing '{key}' (every machine reads the same {key.replace('_', ' ')})")
            if "policy_dir" in shared:
                policy_dir = _absolute(shared["policy_dir"], "shared.policy_dir", shared.line_of("policy_dir"), errors)
            if "media_store" in shared:
                media = _absolute(shared["media_store"], "shared.media_store", shared.line_of("media_store"), errors)
    hosts = _read_hosts(raw, default_data_dir, errors)
    processes = _place(raw, hosts, errors)
    _check_counts(raw, processes, redis, errors)
    _check_ports(hosts, processes, ports, errors, raw)
    if errors.found or policy_dir is None or media is None or default_data_dir is None:
        return None
    assert isinstance(server_name, str) and isinstance(database, str)
    return HostsFile(
        path=path, server_name=server_name, database=database, policy_dir=policy_dir, media_store=media,
        hosts=hosts, ports=ports, public_baseurl=baseurl, redis=redis, python=python, user=raw.get("user", DEFAULT_USER),
        demo=bool(raw.get("demo", False)), voice_models=voice_models, ldap_config=sign_in["ldap_config"],
        oidc_config=sign_in["oidc_config"], db_pool=db_pool, processes=processes,
    )


def _read_hosts(raw: LineDict, default_data_dir: Path | None, errors: _Errors) -> list[Host]:
    entries = raw.get("hosts")
    if "hosts" not in raw:
        return []
    if not isinstance(entries, LineDict) or not entries:
        errors.add(raw.line_of("hosts"), "hosts must map each machine's name to its address and what it runs")
        return []
    hosts: list[Host] = []
    addresses: dict[str, str] = {}
    for name, entry in entries.items():
        line = entries.line_of(name)
        if not _HOST_NAME.match(name):
            errors.add(line, f"host name {name!r} must be letters, digits and '-' (it names the machine's files)")
        if not isinstance(entry, LineDict):
            errors.add(line, f"host '{name}' must be a mapping with address and runs")
            continue
        _unknown(entry, HOST_KEYS, f"host '{name}'", errors)
        address = entry.get("address")
        if not isinstance(address, str) or not _valid_address(address):
            errors.add(entry.line_of("address"), f"host '{name}': address must be an IP address or host name, got {address!r}")
            address = ""
        elif address in addresses:
            errors.add(entry.line_of("address"), f"host '{name}': address {address} is also host '{addresses[address]}'s")
        else:
            addresses[address] = name
        data_dir = default_data_dir
        if "data_dir" in entry:
            data_dir = _absolute(entry["data_dir"], f"host '{name}': data_dir", entry.line_of("data_dir"), errors)
        runs = entry.get("runs")
        roles: list[str] = []
        if not isinstance(runs, LineList) or not runs:
            errors.add(entry.line_of("runs"), f"host '{name}': runs must list what it runs ({', '.join(ROLES)})")
        else:
            for i, role in enumerate(runs):
                if role not in ROLES:
                    errors.add(runs.line_of(i), f"host '{name}': unknown role {role!r} (roles: {', '.join(ROLES)})")
                else:
                    roles.append(role)
        hosts.append(Host(name, address, data_dir or Path(DEFAULT_DATA_DIR), tuple(roles), line))
    return hosts


def _place(raw: LineDict, hosts: list[Host], errors: _Errors) -> list[Process]:
    """Each role of each machine as a named process, in the order ROLES lists them on a
    machine (Redis and the main process first), numbered in file order."""
    numbered: dict[str, int] = {}
    out: list[Process] = []
    for host in hosts:
        for role in sorted(host.runs, key=list(ROLES).index):
            numbered[role] = numbered.get(role, 0) + 1
            if role in ("main", "proxy", "appservice", "redis"):
                name = role if role != "proxy" or numbered[role] == 1 else f"proxy{numbered[role]}"
            else:
                name = f"{role}{numbered[role]}"
            out.append(Process(name, role, host))
    return out


def _check_counts(raw: LineDict, processes: list[Process], redis: Any, errors: _Errors) -> None:
    if "hosts" not in raw or not isinstance(raw.get("hosts"), LineDict):
        return
    line = raw.line_of("hosts")
    for role, (least, most) in COUNTS.items():
        n = sum(p.role == role for p in processes)
        if n < least:
            errors.add(line, f"no host runs '{role}' ({ROLES[role]}); {'one' if most == 1 else 'at least one'} must")
        elif most is not None and n > most:
            where = ", ".join(sorted({p.host.name for p in processes if p.role == role}))
            errors.add(line, f"'{role}' runs {n} times ({where}); a layout has {'one' if most == 1 else f'at most {most}'}")
    own_redis = any(p.role == "redis" for p in processes)
    if own_redis and redis:
        errors.add(raw.line_of("redis"), "redis names an existing Redis, and a host runs 'redis' too; keep one")
    elif not own_redis and not redis:
        errors.add(line, "no Redis: run 'redis' on a host, or name an existing one with redis: HOST:PORT")


def _check_ports(hosts: list[Host], processes: list[Process], ports: dict[str, int], errors: _Errors, raw: LineDict) -> None:
    """Two processes of one machine never listen on the same port."""
    for host in hosts:
        taken: dict[int, str] = {}
        k = 0
        for p in processes:
            if p.host != host:
                continue
            wanted: list[tuple[int, str]] = []
            if p.role in SYNAPSE_ROLES:
                base = ports["synapse"] + 2 * k
                k += 1
                wanted += [(base, f"{p.name}"), (base + 1, f"{p.name}'s replication")]
            elif p.role in ("proxy", "appservice", "redis"):
                wanted.append((ports[p.role], p.name))
                if p.role == "appservice" and ports["hl7"]:
                    wanted.append((ports["hl7"], "HL7 (MLLP)"))
            for port, what in wanted:
                if port > 65535:
                    errors.add(host.line, f"host '{host.name}': {what} would listen on port {port}; lower ports.synapse")
                elif port in taken:
                    errors.add(raw.line_of("ports") if "ports" in raw else host.line,
                               f"host '{host.name}': {what} and {taken[port]} would both listen on port {port}")
                else:
                    taken[port] = what
