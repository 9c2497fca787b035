"""The worker deployment's configs (``carematrix up --workers``), read the way each Synapse
process and nginx read them: every duty of Synapse's workers documentation lands on exactly
one process, and the proxy's configuration is one nginx accepts."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carematrix_ops.cli import build_parser
from carematrix_ops.cli.up_settings import up_settings
from carematrix_ops.deploy import workers
from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.settings import Deployment, Paths, Settings
from carematrix_ops.pgadmin import database_url
from tests.ports import TEST_SERVER_URL, free_port_pair
from tests.support import drop_pg_databases


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    dbname = f"carematrix_wk_{secrets.token_hex(4)}"
    args = ["up", "--data-dir", str(tmp_path_factory.mktemp("wk") / "var"), "--port", str(free_port_pair()),
            "--database", "postgres", "--db-url", database_url(TEST_SERVER_URL, dbname), "--workers"]
    try:
        yield prepare(up_settings(build_parser().parse_args(args)))
    finally:
        drop_pg_databases(dbname)


def synapse_config(deployment: Deployment, name: str) -> Any:
    """The configuration the process ``name`` runs with, as Synapse parses its command line."""
    from synapse.config.homeserver import HomeServerConfig

    argv = workers.synapse_argv("python", deployment.paths, name)
    return HomeServerConfig.load_config("carematrix-test", argv[argv.index("-c"):])


def test_every_duty_runs_on_exactly_one_process(deployment: Deployment):
    names = [workers.MAIN, *(w.name for w in workers.TOPOLOGY)]
    configs = {name: synapse_config(deployment, name) for name in names}
    assert {n: c.worker.instance_name for n, c in configs.items()} == {n: n if n != "main" else "master" for n in names}

    def runs(predicate: Any) -> list[str]:
        return [n for n, c in configs.items() if predicate(c)]

    assert runs(lambda c: c.worker.run_background_tasks) == ["background1"]
    assert runs(lambda c: c.worker.should_notify_appservices) == ["background1"]
    assert runs(lambda c: c.worker.should_update_user_directory) == ["background1"]
    assert runs(lambda c: c.worker.start_pushers) == ["background1"]
    # Every worker reads the media store (the send check's image fingerprints, burns);
    # only media1 is sent clients' media (test_nginx_...) and runs the media jobs.
    assert runs(lambda c: c.media.can_load_media_repo) == ["client1", "client2", "media1", "background1"]
    assert runs(lambda c: getattr(c.media, "media_instance_running_background_jobs", None) == c.worker.instance_name) == ["media1"]
    writers = configs["main"].worker.writers
    assert writers.events == ["client1", "client2"]  # two event persisters
    assert (writers.typing, writers.to_device, writers.receipts) == (["client1"], ["client1"], ["client1"])
    # Every process replicates over the deployment's own Redis and loads our modules.
    for config in configs.values():
        assert config.redis.redis_enabled and config.redis.redis_path == str(workers.redis_socket(deployment.paths))
        loaded = [m[0].__name__ for m in config.modules.loaded_modules]
        assert loaded[:2] == ["CareMatrixAudit", "CareMatrixPolicy"]
        assert loaded == [m[0].__name__ for m in configs["main"].modules.loaded_modules]
    # Nothing listens on a TCP port but the proxy.
    for name, config in configs.items():
        listeners = config.server.listeners if name == "main" else config.worker.worker_listeners
        assert all(hasattr(listener, "path") for listener in listeners), name


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="nginx not installed")
def test_nginx_accepts_the_proxy_config(deployment: Deployment):
    argv = workers.nginx_argv(deployment.paths)
    result = subprocess.run([*argv[:-2], "-t"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text = workers.proxy_config(deployment.paths).read_text()
    assert f"listen 127.0.0.1:{deployment.settings.port};" in text
    assert "location ^~ /_synapse/replication { return 404; }" in text


def test_workers_need_postgres(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "var", database="sqlite", workers=True)
    with pytest.raises(DeployError, match="--workers needs PostgreSQL"):
        prepare(settings)
    assert not (tmp_path / "var" / "synapse").exists()


def test_an_external_redis_is_named_host_and_port(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "var", database="postgres", workers=True, redis="10.0.0.5:6380")
    assert workers.shared_values(workers.local_layout(settings, Paths(settings.data_dir)))["redis"] == {
        "enabled": True, "host": "10.0.0.5", "port": 6380,
    }
    with pytest.raises(DeployError, match="HOST:PORT"):
        workers.parse_redis("redis.example")


def test_a_data_dir_too_deep_for_unix_sockets_is_refused_before_anything_is_written(tmp_path: Path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    settings = Settings(data_dir=deep, database="postgres", db_url="postgresql://x@127.0.0.1:1/x", workers=True)
    with pytest.raises(DeployError, match="too deep"):
        prepare(settings)
    assert not (deep / "synapse").exists()
