"""``carematrix deploy render``: a hosts file's mistakes reported by file and line before
anything is written, and each machine's rendered files read the way its processes read
them — Synapse's config loader for every process, ``nginx -t`` for the proxy,
``systemd-analyze verify`` for the units."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from carematrix_ops.deploy import workers
from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.hosts import read_hosts
from carematrix_ops.deploy.settings import Paths
from carematrix_ops.deploy.units import UNIT_DIR, parse_exec
from carematrix_ops.pgadmin import database_url
from tests.paths import DEMO_POLICY_DIR
from tests.ports import TEST_SERVER_URL, free_port
from tests.support import CLI, drop_pg_databases

ADDRESSES = {"core": "10.20.0.10", "app1": "10.20.0.11", "app2": "10.20.0.12"}


def hosts_yaml(base: Path, dbname: str, extra: str = "") -> str:
    return f"""\
server_name: renhe.example
public_baseurl: https://matrix.renhe.example/
database: {database_url(TEST_SERVER_URL, dbname)}
db_pool: 4
shared:
  policy_dir: {base / 'shared' / 'policies'}
  media_store: {base / 'shared' / 'media'}
{extra}hosts:
  core:
    address: {ADDRESSES['core']}
    data_dir: {base / 'core'}
    runs: [proxy, main, appservice, redis, background, writer]
  app1:
    address: {ADDRESSES['app1']}
    data_dir: {base / 'app1'}
    runs: [client, client, events, media]
  app2:
    address: {ADDRESSES['app2']}
    data_dir: {base / 'app2'}
    runs: [client, events, media]
"""


@dataclass
class Rendered:
    base: Path
    out: Path
    stdout: str


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rendered]:
    base = tmp_path_factory.mktemp("render")
    shutil.copytree(DEMO_POLICY_DIR, base / "shared" / "policies")
    dbname = f"carematrix_render_{secrets.token_hex(4)}"
    (base / "hosts.yaml").write_text(hosts_yaml(base, dbname))
    try:
        result = subprocess.run([CLI, "deploy", "render", str(base / "hosts.yaml"), "--out", str(base / "out")],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        # Installed as rsync would: each machine's data dir where its tree says.
        for name in ADDRESSES:
            tree = base / "out" / name
            shutil.copytree(tree / (base / name).relative_to("/"), base / name)
        yield Rendered(base, base / "out", result.stdout)
    finally:
        drop_pg_databases(dbname)


def synapse_config(data_dir: Path, unit: Path) -> Any:
    """The configuration a unit's Synapse process runs with, as Synapse parses its command line."""
    from synapse.config.homeserver import HomeServerConfig

    argv = parse_exec(next(ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart=")).partition("=")[2])
    assert str(data_dir) in argv[argv.index("-c") + 1]
    return HomeServerConfig.load_config("carematrix-test", argv[argv.index("-c"):])


def units(rendered: Rendered, machine: str) -> dict[str, Path]:
    return {p.stem: p for p in (rendered.out / machine / UNIT_DIR.relative_to("/")).glob("*.service")}


def test_each_machine_runs_what_the_hosts_file_gives_it(rendered: Rendered):
    assert set(units(rendered, "core")) == {
        "carematrix-redis", "carematrix-synapse-main", "carematrix-synapse-background1", "carematrix-synapse-writer1",
        "carematrix-proxy", "carematrix-appservice", "carematrix-seed",
    }
    assert set(units(rendered, "app1")) == {
        "carematrix-synapse-client1", "carematrix-synapse-client2", "carematrix-synapse-events1",
        "carematrix-synapse-media1",
    }
    assert set(units(rendered, "app2")) == {
        "carematrix-synapse-client3", "carematrix-synapse-events2", "carematrix-synapse-media2",
    }
    # A machine gets the secrets of what it runs only.
    assert (rendered.base / "core" / "appservice" / "config.yaml").exists()
    assert not (rendered.base / "app1" / "appservice" / "config.yaml").exists()
    assert not (rendered.base / "app1" / "proxy" / "nginx.conf").exists()
    for line in ("core (10.20.0.10", "client1      10.20.0.11:8100", "events2      10.20.0.12:8102"):
        assert line in rendered.stdout


def test_every_process_listens_on_its_machine_and_finds_the_others(rendered: Rendered):
    configs: dict[str, Any] = {}
    for machine in ADDRESSES:
        for name, unit in units(rendered, machine).items():
            if name.startswith("carematrix-synapse-"):
                configs[name.removeprefix("carematrix-synapse-")] = (machine, synapse_config(rendered.base / machine, unit))
    assert sorted(configs) == ["background1", "client1", "client2", "client3", "events1", "events2", "main",
                               "media1", "media2", "writer1"]
    secret = {c.worker.worker_replication_secret for _, c in configs.values()}
    assert len(secret) == 1 and None not in secret
    for name, (machine, config) in configs.items():
        assert config.worker.instance_name == (name if name != "main" else "master")
        listeners = config.server.listeners if name == "main" else config.worker.worker_listeners
        assert {str(listener.bind_addresses[0]) for listener in listeners} == {ADDRESSES[machine]}, name
        # Every process reaches the main process and the writers on their machines, and
        # Redis on the machine that runs it, signed in.
        instance_map = config.worker.instance_map
        main = instance_map.get("master") or instance_map["main"]  # a worker's config renames it
        assert (main.host, main.port) == (ADDRESSES["core"], 8101)
        assert (instance_map["events2"].host, instance_map["events2"].port) == (ADDRESSES["app2"], 8103)
        assert (config.redis.redis_host, config.redis.redis_port) == (ADDRESSES["core"], 6379)
        assert config.redis.redis_password
        if config.media.can_load_media_repo:  # the processes that read uploads read the shared store
            assert config.media.media_store_path == str(rendered.base / "shared" / "media")
        assert config.server.public_baseurl == "https://matrix.renhe.example/"
        loaded = [m[0].__name__ for m in config.modules.loaded_modules]
        assert loaded[:2] == ["CareMatrixAudit", "CareMatrixPolicy"]
    main = configs["main"][1]
    writers = main.worker.writers
    assert writers.events == ["events1", "events2"]
    assert (writers.typing, writers.to_device, writers.receipts) == (["writer1"], ["writer1"], ["writer1"])
    assert [n for n, (_, c) in configs.items() if c.worker.run_background_tasks] == ["background1"]
    assert [n for n, (_, c) in configs.items()
            if getattr(c.media, "media_instance_running_background_jobs", None) == c.worker.instance_name] == ["media1"]
    # The appservice answers Synapse on its machine, and reaches Synapse through the proxy.
    registration = yaml.safe_load((rendered.base / "app1" / "appservice" / "registration.yaml").read_text())
    assert registration["url"] == f"http://{ADDRESSES['core']}:8009"
    appservice = yaml.safe_load((rendered.base / "core" / "appservice" / "config.yaml").read_text())
    assert appservice["homeserver"]["url"] == f"http://{ADDRESSES['core']}:8008"
    assert appservice["appservice"]["listen_host"] == ADDRESSES["core"]


@pytest.mark.skipif(workers.nginx_binary() is None, reason="nginx not installed")
def test_nginx_accepts_the_proxy_config_and_routes_to_the_workers_machines(rendered: Rendered):
    paths = Paths(rendered.base / "core")
    text = workers.proxy_config(paths).read_text()
    assert f"listen {ADDRESSES['core']}:8008;" in text
    # nginx -t binds the listen address, which is not this machine's: tested on a free one.
    probe = paths.root / "proxy" / "probe.conf"
    probe.write_text(text.replace(f"listen {ADDRESSES['core']}:8008;", f"listen 127.0.0.1:{free_port()};"))
    argv = workers.nginx_argv(paths)
    result = subprocess.run([*argv[:-4], "-c", str(probe), "-t"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    client = text.split("upstream synapse_client {", 1)[1].split("}", 1)[0]
    assert [ln.split()[1] for ln in client.splitlines() if "server " in ln] == [
        f"{ADDRESSES['app1']}:8100", f"{ADDRESSES['app1']}:8102", f"{ADDRESSES['app2']}:8100",
    ]
    assert "location ^~ /_synapse/replication { return 404; }" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd not installed")
def test_systemd_accepts_every_machines_units(rendered: Rendered):
    for machine in ADDRESSES:
        unit_dir = rendered.out / machine / UNIT_DIR.relative_to("/")
        files = sorted(str(p) for p in unit_dir.iterdir())
        result = subprocess.run(["systemd-analyze", "verify", *files], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and not result.stderr.strip(), (machine, result.stderr)
    proxy = (rendered.out / "core" / UNIT_DIR.relative_to("/") / "carematrix-proxy.service").read_text()
    assert "After=network-online.target carematrix-redis.service carematrix-synapse-main.service" in proxy


def test_a_second_render_keeps_the_secrets(rendered: Rendered, tmp_path: Path):
    before = (rendered.out / "secrets" / "secrets.json").read_text()
    key = (rendered.out / "secrets" / "synapse" / "audit_signing.key").read_text()
    again = subprocess.run([CLI, "deploy", "render", str(rendered.base / "hosts.yaml"), "--out", str(rendered.out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert (rendered.out / "secrets" / "secrets.json").read_text() == before
    assert (rendered.out / "secrets" / "synapse" / "audit_signing.key").read_text() == key


def test_mistakes_are_reported_by_file_and_line_and_nothing_is_written(tmp_path: Path):
    bad = tmp_path / "hosts.yaml"
    bad.write_text("""\
server_name: renhe.example
database: mysql://x@db/carematrix
shared:
  policy_dir: /srv/shared/policies
  media_store: shared/media
ports:
  proxy: 70000
colour: blue
hosts:
  core:
    address: 10.20.0.10
    runs: [proxy, appservice, redis]
  app1:
    address: 10.20.0.10
    runs: [client, clinet, media]
""")
    result = subprocess.run([CLI, "deploy", "render", str(bad), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    errors = [ln.removeprefix("error: ") for ln in result.stderr.splitlines()]
    assert errors == [
        f"{bad}:2: database must look like postgresql://user[:password]@host[:port]/dbname, got 'mysql://x@db/carematrix'",
        f"{bad}:5: shared.media_store must be an absolute path (where it is on the machines), got 'shared/media'",
        f"{bad}:7: ports.proxy must be a port number, got 70000",
        f"{bad}:8: unknown key 'colour' in the hosts file (expected one of: data_dir, database, db_pool, demo, hosts, "
        "ldap_config, oidc_config, ports, public_baseurl, python, redis, server_name, shared, user, voice_models)",
        f"{bad}:9: no host runs 'main' (the main Synapse process (admin API, our modules' endpoints, presence, "
        "push rules)); one must",
        f"{bad}:14: host 'app1': address 10.20.0.10 is also host 'core's",
        f"{bad}:15: host 'app1': unknown role 'clinet' (roles: redis, main, client, events, writer, media, "
        "background, proxy, appservice)",
    ]
    assert not (tmp_path / "out").exists()


def test_layout_mistakes_name_the_line(tmp_path: Path):
    base = tmp_path
    text = hosts_yaml(base, "x")
    cases = {
        # Two main processes.
        text.replace("runs: [client, events, media]", "runs: [client, events, media, main]"):
            ":8: 'main' runs 2 times (app2, core); a layout has one",
        # No Redis anywhere.
        text.replace("appservice, redis,", "appservice,"): ":8: no Redis: run 'redis' on a host, or name an existing one",
        # A port taken twice on one machine.
        text.replace("hosts:\n", "ports:\n  appservice: 8100\nhosts:\n"):
            ":8: host 'core': appservice and main would both listen on port 8100",
        # Not YAML.
        text.replace("  core:\n", "  core: [\n"): ":11: invalid YAML",
    }
    for i, (content, expected) in enumerate(cases.items()):
        path = base / f"h{i}.yaml"
        path.write_text(content)
        with pytest.raises(DeployError) as info:
            read_hosts(path)
        assert f"{path}{expected}" in str(info.value), str(info.value)


def test_a_layout_that_would_open_more_connections_than_postgresql_accepts_is_refused(tmp_path: Path):
    """Past its limit PostgreSQL refuses a process's new connection and the request that
    needed it fails (createRoom answered 500 in a first try of the three-machine test)."""
    shutil.copytree(DEMO_POLICY_DIR, tmp_path / "shared" / "policies")
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(hosts_yaml(tmp_path, f"carematrix_render_{secrets.token_hex(4)}").replace("db_pool: 4", "db_pool: 100"))
    result = subprocess.run([CLI, "deploy", "render", str(hosts), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "this layout (10 Synapse processes x db_pool 100, the appservice 10) opens up to 1010: raise " \
           "max_connections" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
