"""The worker deployment (``carematrix up --workers``): Synapse split into a main process and
workers that share the PostgreSQL database and talk over Redis, behind one reverse proxy.

One machine of a hospital group outgrows one Synapse process: every request, every event
persisted and every module callback runs on one core. Synapse's own answer is workers; this
module renders their configuration:

* ``homeserver.yaml`` stays what a monolith reads; ``workers.yaml`` (shared) is read after
  it by every process and turns it into a worker deployment: the main process listens on a
  UNIX socket instead of the public port, Redis, the instance map, the stream writers and
  which instance runs which background duty;
* ``workers/<name>.yaml`` per worker (its name, listeners and log);
* ``proxy/nginx.conf``: the reverse proxy on the public port that routes each endpoint to
  the process that serves it, so clients, the appservice and the CLI keep one URL.

Every Synapse process listens on UNIX sockets in ``synapse/sockets/``, never on a TCP port:
nothing to allocate or collide with, and the replication sockets are not reachable from the
network at all. Redis is, by default, a private ``redis-server`` of this data dir on a UNIX
socket (Synapse names its Redis channels after the server name, so two deployments sharing
one Redis must have different server names); ``--redis HOST:PORT`` uses another.

The topology is the smallest that gives every duty of Synapse's workers documentation its
own place while fitting a small machine; see docs/scale.md for larger ones.

What is rendered depends on a :class:`Layout`: the processes and where each listens. On one
machine (:func:`local_layout`) that is the topology below on UNIX sockets; ``carematrix
deploy`` (carematrix_ops/deploy/hosts.py) makes one from a hosts file, with the processes
spread over machines and listening on their addresses. The same functions render both.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.settings import Paths, Settings

MAIN = "main"
# The secret Redis is signed in with, when a layout over several machines runs its own.
REDIS_PASSWORD = "redis_password"
# UNIX socket paths are limited to 107 bytes by the kernel.
MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class Worker:
    """One Synapse worker process and what it does."""

    name: str
    # What its public socket serves: "client" (client API, /sync) or "media".
    resources: tuple[str, ...]
    # Streams this worker writes (Synapse's ``stream_writers``); a writer is in the instance map.
    streams: tuple[str, ...] = ()
    # Background duties: "background" (run_background_tasks_on), "pusher", "appservice"
    # (notify_appservices_from_worker), "user_directory", "media_jobs".
    duties: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # worker-only config keys
    # The proxy's groups that send it requests ("client", "media"); None: what it serves. A
    # writer of typing / to-device / receipts serves the client API for those endpoints only.
    routes: tuple[str, ...] | None = None

    @property
    def has_replication(self) -> bool:
        return bool(self.streams)

    @property
    def routed(self) -> tuple[str, ...]:
        return self.resources if self.routes is None else self.routes


# Two generic workers serve the client API and /sync (each client sticks to one by its access
# token) and persist events (rooms are spread over them by room ID); the first also writes
# typing, to-device messages and receipts. The media worker serves every media request
# through our watermarking gate. The background worker runs Synapse's background tasks (and
# with them our burn loop, audit checkpoints and the retention purge), pushers, the one
# appservice notifier and the user directory updater.
#
# Every worker loads a media repository (``enable_media_repo``), although clients' media go
# to media1 only: the send check reads an uploaded image from the media store (no-forward
# fingerprints) on the worker that creates the event, and burns delete files on the
# background worker. Media clean-up jobs run on media1 alone.
MEDIA_STORE = {"enable_media_repo": True}
TOPOLOGY: tuple[Worker, ...] = (
    Worker("client1", ("client",), streams=("events", "typing", "to_device", "receipts"), extra=MEDIA_STORE),
    Worker("client2", ("client",), streams=("events",), extra=MEDIA_STORE),
    Worker("media1", ("media",), duties=("media_jobs",), extra=MEDIA_STORE),
    Worker("background1", (), duties=("background", "pusher", "appservice", "user_directory"), extra=MEDIA_STORE),
)


def writers(topology: tuple[Worker, ...], stream: str) -> list[str]:
    return [w.name for w in topology if stream in w.streams]


def with_duty(topology: tuple[Worker, ...], duty: str) -> str:
    names = [w.name for w in topology if duty in w.duties]
    return names[0] if names else MAIN


def netloc(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Listen:
    """Where a Synapse process listens: a UNIX socket (``path``, one machine) or an address
    and port (processes on several machines)."""

    path: str = ""
    host: str = ""
    port: int = 0

    def synapse(self) -> dict[str, Any]:
        """The keys of a Synapse listener that say where it listens."""
        if self.path:
            return {"path": self.path, "mode": 0o600}
        return {"port": self.port, "bind_addresses": [self.host]}

    def instance(self) -> dict[str, Any]:
        """This listener as an ``instance_map`` entry."""
        return {"path": self.path} if self.path else {"host": self.host, "port": self.port}

    @property
    def nginx(self) -> str:
        """This listener as an nginx upstream server."""
        return f"unix:{self.path}" if self.path else netloc(self.host, self.port)

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        """``GET path`` from the process listening here: status and body (OSError if none)."""
        from carematrix_ops.http import plain_get

        if self.path:
            return plain_get(path, socket_path=self.path, timeout=timeout)
        return plain_get(path, host=self.host, port=self.port, timeout=timeout)

    def __str__(self) -> str:
        return self.path or netloc(self.host, self.port)


@dataclass(frozen=True)
class Layout:
    """A worker deployment's Synapse processes and where each listens."""

    topology: tuple[Worker, ...]
    # Every process (MAIN too): where it serves clients (through the proxy) and its health.
    public: dict[str, Listen]
    # MAIN and every stream writer: where the other processes reach it for replication.
    replication: dict[str, Listen]
    # Synapse's ``redis`` settings.
    redis: dict[str, Any]
    # Between machines, the main process's replication endpoints want this secret from the
    # workers (Synapse's worker_replication_secret); UNIX sockets of mode 600 need none.
    replication_secret: str | None = None

    @property
    def names(self) -> list[str]:
        return [MAIN, *(w.name for w in self.topology)]

    def worker(self, name: str) -> Worker:
        return next(w for w in self.topology if w.name == name)


def local_layout(settings: Settings, paths: Paths) -> Layout:
    """``carematrix up --workers``: :data:`TOPOLOGY` on one machine, on UNIX sockets."""
    names = [MAIN, *(w.name for w in TOPOLOGY)]
    return Layout(
        topology=TOPOLOGY,
        public={n: Listen(path=str(public_socket(paths, n))) for n in names},
        replication={
            n: Listen(path=str(replication_socket(paths, n)))
            for n in [MAIN, *(w.name for w in TOPOLOGY if w.has_replication)]
        },
        redis=_redis_config(settings, paths),
    )


def layout_for(settings: Settings, paths: Paths) -> Layout:
    """The layout of a data dir: rendered by ``carematrix deploy`` from a hosts file, or
    the one-machine layout of ``carematrix up --workers``."""
    if settings.hosts_file:
        from carematrix_ops.deploy.hosts import read_hosts

        return read_hosts(Path(settings.hosts_file), check_files=False).layout(_secrets(paths))
    return local_layout(settings, paths)


def _secrets(paths: Paths) -> dict[str, str]:
    import json

    try:
        return dict(json.loads(paths.secrets.read_text()))
    except (OSError, ValueError) as exc:
        raise DeployError(f"cannot read {paths.secrets}: {exc}") from exc


# -- paths --------------------------------------------------------------------------------


def sockets_dir(paths: Paths) -> Path:
    return paths.synapse_dir / "sockets"


def public_socket(paths: Paths, name: str) -> Path:
    """Where a Synapse process serves clients (and its health)."""
    return sockets_dir(paths) / f"{name}.sock"


def replication_socket(paths: Paths, name: str) -> Path:
    return sockets_dir(paths) / f"{name}-replication.sock"


def shared_config(paths: Paths) -> Path:
    return paths.synapse_dir / "workers.yaml"


def worker_config(paths: Paths, name: str) -> Path:
    return paths.synapse_dir / "workers" / f"{name}.yaml"


def worker_log(paths: Paths, name: str) -> Path:
    return paths.synapse_dir / f"{name}.log"


def worker_log_config(paths: Paths, name: str) -> Path:
    return paths.synapse_dir / "workers" / f"{name}.log.yaml"


def proxy_dir(paths: Paths) -> Path:
    return paths.root / "proxy"


def proxy_config(paths: Paths) -> Path:
    return proxy_dir(paths) / "nginx.conf"


def redis_dir(paths: Paths) -> Path:
    return paths.root / "redis"


def redis_socket(paths: Paths) -> Path:
    return redis_dir(paths) / "redis.sock"


# -- checks -------------------------------------------------------------------------------


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def redis_binary() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None
    )


def parse_redis(value: str) -> tuple[str, int]:
    """``HOST:PORT`` of an existing Redis server."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeployError(f"--redis must be HOST:PORT (e.g. 127.0.0.1:6379), got {value!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def check_workers(settings: Settings, paths: Paths) -> None:
    """A worker deployment needs PostgreSQL, nginx and a Redis; checked before anything is
    written so a failed start leaves the data dir as it was."""
    if settings.database != "postgres":
        raise DeployError(
            "--workers needs PostgreSQL (Synapse workers share one database): add --database postgres"
        )
    if nginx_binary() is None:
        raise DeployError("--workers needs nginx as its reverse proxy: apt-get install nginx-light")
    if settings.redis:
        parse_redis(settings.redis)
    elif redis_binary() is None:
        raise DeployError(
            "--workers needs Redis: apt-get install redis-server, or point at one with --redis HOST:PORT"
        )
    longest = max(
        [replication_socket(paths, w.name) for w in TOPOLOGY] + [redis_socket(paths)], key=lambda p: len(str(p))
    )
    if len(str(longest)) > MAX_SOCKET_PATH:
        raise DeployError(
            f"the data dir {paths.root} is too deep for the workers' UNIX sockets ({longest} is over "
            f"{MAX_SOCKET_PATH} bytes); use a shorter --data-dir"
        )
    from carematrix_ops.deploy.postgres import (
        APPSERVICE_DB_CONNECTIONS,
        SYNAPSE_DB_CONNECTIONS,
        check_connections,
    )

    if settings.db_url:
        processes = 1 + len(TOPOLOGY)
        check_connections(settings.db_url, processes * SYNAPSE_DB_CONNECTIONS + APPSERVICE_DB_CONNECTIONS,
                          f"the worker deployment ({processes} Synapse processes x {SYNAPSE_DB_CONNECTIONS}, the "
                          f"appservice {APPSERVICE_DB_CONNECTIONS})", "run fewer deployments on this PostgreSQL")


# -- Synapse configs ------------------------------------------------------------------------


def _redis_config(settings: Settings, paths: Paths) -> dict[str, Any]:
    if settings.redis:
        host, port = parse_redis(settings.redis)
        return {"enabled": True, "host": host, "port": port}
    return {"enabled": True, "path": str(redis_socket(paths))}


def shared_values(layout: Layout) -> dict[str, Any]:
    """What every process reads after homeserver.yaml (top-level keys replace its own)."""
    topology = layout.topology
    instance_map = {name: listen.instance() for name, listen in layout.replication.items()}
    streams = {s: writers(topology, s) for s in ("events", "typing", "to_device", "receipts")}
    values: dict[str, Any] = {
        # The main process: clients reach it through the proxy only.
        "listeners": [
            {**layout.public[MAIN].synapse(), "type": "http", "x_forwarded": True,
             "resources": [{"names": ["client", "health"], "compress": False}]},
            {**layout.replication[MAIN].synapse(), "type": "http",
             "resources": [{"names": ["replication"]}]},
        ],
        "redis": layout.redis,
        "instance_map": instance_map,
        "stream_writers": {k: v for k, v in streams.items() if v},
        # Media is served by the media worker alone (through the watermarking gate).
        "enable_media_repo": False,
        "media_instance_running_background_jobs": with_duty(topology, "media_jobs"),
        "run_background_tasks_on": with_duty(topology, "background"),
        "pusher_instances": [w.name for w in topology if "pusher" in w.duties],
        "notify_appservices_from_worker": with_duty(topology, "appservice"),
        "update_user_directory_from_worker": with_duty(topology, "user_directory"),
    }
    if layout.replication_secret:
        values["worker_replication_secret"] = layout.replication_secret
    return values


def worker_values(layout: Layout, paths: Paths, worker: Worker) -> dict[str, Any]:
    listeners: list[dict[str, Any]] = [
        {**layout.public[worker.name].synapse(), "type": "http", "x_forwarded": True,
         "resources": [{"names": [*worker.resources, "health"], "compress": False}]},
    ]
    if worker.name in layout.replication:
        listeners.append(
            {**layout.replication[worker.name].synapse(), "type": "http",
             "resources": [{"names": ["replication"]}]}
        )
    return {
        "worker_app": "synapse.app.generic_worker",
        "worker_name": worker.name,
        "worker_listeners": listeners,
        "worker_log_config": str(worker_log_config(paths, worker.name)),
        **worker.extra,
    }


# -- the reverse proxy ---------------------------------------------------------------------

# Synapse's workers documentation: the client endpoints a generic worker serves. Everything
# else (admin API, our modules' endpoints, account data, presence, push rules, ...) goes to
# the main process.
CLIENT_WORKER_PATTERNS = (
    r"^/_matrix/client/(r0|v3)/sync$",
    r"^/_matrix/client/(api/v1|r0|v3)/events$",
    r"^/_matrix/client/(api/v1|r0|v3)/initialSync$",
    r"^/_matrix/client/(api/v1|r0|v3)/rooms/[^/]+/initialSync$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/createRoom$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/publicRooms$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/joined_members$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/context/.*$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/members$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/state$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/messages$",
    r"^/_matrix/client/v1/rooms/.*/hierarchy$",
    r"^/_matrix/client/(v1|unstable)/rooms/.*/relations/",
    r"^/_matrix/client/v1/rooms/.*/threads$",
    r"^/_matrix/client/(r0|v3|unstable)/account/whoami$",
    r"^/_matrix/client/(r0|v3|unstable)/devices$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/event/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/joined_rooms$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/search$",
    r"^/_matrix/client/(r0|v3|unstable)/user/.*/filter(/|$)",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/directory/room/.*$",
    r"^/_matrix/client/(r0|v3|unstable)/capabilities$",
    r"^/_matrix/client/(r0|v3|unstable)/keys/query$",
    r"^/_matrix/client/(r0|v3|unstable)/keys/changes$",
    r"^/_matrix/client/(r0|v3|unstable)/keys/claim$",
    r"^/_matrix/client/(r0|v3|unstable)/room_keys/",
    r"^/_matrix/client/(r0|v3|unstable)/keys/upload",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/login$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/redact",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/send",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/state/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/(join|invite|leave|ban|unban|kick)$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/join/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/profile/",
    r"^/_matrix/client/(r0|v3|unstable)/user_directory/search$",
    # Ours: the appservice's audit records and auditors' searches (synapse_modules.audit_module)
    # are served by every process; on the client workers they do not wait for the main one.
    r"^/_synapse/client/carematrix/audit/(records|search)$",
)

# Endpoints of a stream that only its writer serves.
STREAM_PATTERNS = {
    "typing": (r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/typing",),
    "to_device": (r"^/_matrix/client/(r0|v3|unstable)/sendToDevice/",),
    "receipts": (
        r"^/_matrix/client/(r0|v3|unstable)/rooms/.*/receipt",
        r"^/_matrix/client/(r0|v3|unstable)/rooms/.*/read_markers",
    ),
}

MEDIA_PATTERNS = (r"^/_matrix/media/", r"^/_matrix/client/v1/media/", r"^/_synapse/admin/v1/(media|quarantine_media|purge_media_cache)")


UPSTREAM_KEEPALIVE = 256  # idle connections nginx keeps to each group of processes


def _upstream(name: str, servers: list[Listen], sticky: bool) -> str:
    lines = [f"    upstream {name} {{"]
    if sticky and len(servers) > 1:
        # A client stays on one worker (its writes and its /sync see the same caches).
        lines.append("        hash $http_authorization$arg_access_token consistent;")
    lines += [f"        server {s.nginx} max_fails=0;" for s in servers]
    # Connections kept open between requests: with too few, a burst of requests opens a new
    # connection per request, which a busy process may not accept in time (502s under 200
    # concurrent senders with 16). Closed before Synapse's own 60 s idle timeout, so nginx
    # never reuses a connection the process is closing.
    lines.append(f"        keepalive {UPSTREAM_KEEPALIVE};")
    lines.append("        keepalive_timeout 30s;")
    lines.append("    }")
    return "\n".join(lines)


def _locations(patterns: tuple[str, ...], upstream: str) -> str:
    """One nginx regex location per pattern (nginx tries regex locations in order)."""
    for p in patterns:
        # A pattern with a quote or brace would break out of nginx syntax.
        if re.search(r"[\"'{};\s]", p):
            raise DeployError(f"route pattern {p!r} cannot be put in nginx.conf")
    return "\n".join(f"        location ~ {p} {{ proxy_pass http://{upstream}; }}" for p in patterns)


def nginx_conf(
    layout: Layout, pdir: Path, listen: str, worker_processes: str = "1", worker_connections: int = 4096,
    run_as: str | None = None,
) -> str:
    """The reverse proxy: ``listen`` (address:port), every endpoint to the process serving
    it. ``run_as``: the user nginx's workers run as when it is started as root."""
    topology = layout.topology
    client_workers = [w for w in topology if "client" in w.routed]
    media_workers = [w for w in topology if "media" in w.routed]
    main = [layout.public[MAIN]]
    ups = [
        _upstream("synapse_main", main, sticky=False),
        _upstream("synapse_client", [layout.public[w.name] for w in client_workers] or main, sticky=True),
        _upstream("synapse_media", [layout.public[w.name] for w in media_workers] or main, sticky=False),
    ]
    locations = []
    for stream, patterns in STREAM_PATTERNS.items():
        names = writers(topology, stream)
        if names:
            ups.append(_upstream(f"synapse_{stream}", [layout.public[n] for n in names], sticky=True))
            locations.append(_locations(patterns, f"synapse_{stream}"))
    locations.append(_locations(MEDIA_PATTERNS, "synapse_media"))
    locations.append(_locations(CLIENT_WORKER_PATTERNS, "synapse_client"))
    user = f"user {run_as};\n" if run_as else ""
    return f"""# Rendered by carematrix on every start or render; edits are overwritten.
{user}worker_processes {worker_processes};
pid {pdir / 'nginx.pid'};
error_log {pdir / 'error.log'} warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {pdir / 'tmp' / 'body'};
    proxy_temp_path {pdir / 'tmp' / 'proxy'};
    fastcgi_temp_path {pdir / 'tmp' / 'fastcgi'};
    uwsgi_temp_path {pdir / 'tmp' / 'uwsgi'};
    scgi_temp_path {pdir / 'tmp' / 'scgi'};
    # Uploads up to Synapse's own limit; long-polling /sync.
    client_max_body_size 100M;
    proxy_read_timeout 600s;
    proxy_http_version 1.1;
    proxy_request_buffering off;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $remote_addr;
    proxy_set_header X-Forwarded-Proto $scheme;
    # A process that is down (restarting) refuses the connection before anything is sent:
    # the request goes to the next process of its group, POSTs included.
    proxy_next_upstream error;
{chr(10).join(ups)}
    server {{
        listen {listen};
        # Replication is between Synapse processes only, on their own listeners.
        location ^~ /_synapse/replication {{ return 404; }}
{chr(10).join(locations)}
        location / {{ proxy_pass http://synapse_main; }}
    }}
}}
"""


def local_nginx_conf(settings: Settings, paths: Paths) -> str:
    """``carematrix up --workers``'s proxy: one nginx worker on ``--bind``:``--port``."""
    # nginx as root would drop its workers to "nobody", who may not open our sockets.
    run_as = getpass.getuser() if os.geteuid() == 0 else None
    return nginx_conf(local_layout(settings, paths), proxy_dir(paths), f"{settings.bind_address}:{settings.port}",
                      run_as=run_as)


def nginx_argv(paths: Paths) -> list[str]:
    binary = nginx_binary() or "nginx"
    pdir = proxy_dir(paths)
    return [binary, "-p", str(pdir), "-e", str(pdir / "error.log"), "-c", str(proxy_config(paths)), "-g", "daemon off;"]


def redis_argv(paths: Paths) -> list[str]:
    """A private Redis for this data dir: replication only, nothing kept on disk (Synapse
    keeps nothing in Redis that must survive a restart)."""
    return [
        redis_binary() or "redis-server", "--port", "0", "--unixsocket", str(redis_socket(paths)),
        "--unixsocketperm", "700", "--dir", str(redis_dir(paths)), "--save", "", "--appendonly", "no",
        "--daemonize", "no", "--logfile", "",
    ]


def synapse_argv(python: str, paths: Paths, name: str) -> list[str]:
    """The command line of one Synapse process of the worker deployment."""
    configs = ["-c", str(paths.homeserver_config), "-c", str(shared_config(paths))]
    if name == MAIN:
        return [python, "-m", "synapse.app.homeserver", *configs]
    return [python, "-m", "synapse.app.generic_worker", *configs, "-c", str(worker_config(paths, name))]


def prepare_dirs(paths: Paths, own_redis: bool, destdir: Path | None = None) -> None:
    from carematrix_ops.deploy.files import staged

    for d in (sockets_dir(paths), paths.synapse_dir / "workers", proxy_dir(paths) / "tmp"):
        staged(d, destdir).mkdir(parents=True, exist_ok=True)
    if own_redis:
        staged(redis_dir(paths), destdir).mkdir(parents=True, exist_ok=True)
