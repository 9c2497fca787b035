"""Start, watch and stop the stack's processes (Synapse, the appservice, the TURN server when
coturn is installed and, in demo mode, the demo hospital's EMR and PACS).

Used by ``carematrix up`` and by the test harness, so tests exercise the same start-up
path an operator uses. The demo systems are children like the others, so Ctrl-C stops them
and a crash restarts them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from carematrix_ops.deploy.checks import check_ports
from carematrix_ops.deploy.settings import Deployment
from carematrix_ops.http import HttpError, request_json

log = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 20.0
RESTART_LIMIT = 5  # crashes within RESTART_WINDOW before we give up
RESTART_WINDOW_SECONDS = 300.0


class StartupFailed(Exception):
    pass


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    log_path: Path
    cwd: Path
    health_url: str
    env: dict[str, str] = field(default_factory=dict)  # on top of ours
    # For a process that speaks no HTTP (coturn, Redis) or listens on a UNIX socket (the
    # worker deployment's Synapse processes): asked instead of health_url.
    health_check: Callable[[], bool] | None = None
    popen: subprocess.Popen | None = None
    crashes: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, **self.env}
        env["PYTHONUNBUFFERED"] = "1"
        self.popen = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us; we stop children in order
        )
        out.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def healthy(self) -> bool:
        if self.health_check is not None:
            return self.health_check()
        try:
            request_json("GET", self.health_url, timeout=2)
            return True
        except (HttpError, OSError):
            return False

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
            self.popen.kill()
            self.popen.wait()

    def kill(self) -> None:
        """Hard kill, as a crash would: used by durability tests."""
        if self.alive():
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait()


def _demo_processes(deployment: Deployment) -> list[ManagedProcess]:
    """The demo EMR and (if Orthanc is installed) the demo PACS, as prepare() configured them."""
    s, p = deployment.settings, deployment.paths
    if not s.demo_systems:
        return []
    from carematrix_ops.demo import DEMO_DATA, pacs

    processes = [
        ManagedProcess(
            "demo-emr",
            [sys.executable, "-m", "carematrix_ops.demo.emr", "--port", str(s.demo_emr_port), "--data", str(DEMO_DATA)],
            p.demo_emr_log,
            p.root,
            f"{s.demo_emr_url}/metadata",
        )
    ]
    if s.has_demo_pacs:
        processes.append(
            ManagedProcess(
                "demo-pacs",
                pacs.argv(p.demo_pacs / pacs.CONFIG_NAME),
                p.demo_pacs_log,
                p.demo_pacs,
                f"{s.demo_pacs_url}/system",
                env=pacs.ORTHANC_ENV,
            )
        )
    return processes


def _turn_process(deployment: Deployment) -> list[ManagedProcess]:
    """coturn, when installed (carematrix_ops.deploy.turn): relays Element's calls."""
    from carematrix_ops.deploy import turn

    s, p = deployment.settings, deployment.paths
    if not turn.enabled(s):
        return []
    return [
        ManagedProcess(
            "turn", turn.argv(p.turn_dir / turn.CONFIG_NAME), p.turn_log, p.turn_dir, "",
            health_check=lambda: turn.healthy(s),
        )
    ]


def _worker_processes(deployment: Deployment) -> tuple[list[ManagedProcess], ManagedProcess, list[ManagedProcess], ManagedProcess]:
    """The worker deployment's processes (carematrix_ops/deploy/workers.py): its private
    Redis (if it has one), the main Synapse process, the workers and the reverse proxy."""
    from carematrix_ops.deploy import workers
    from carematrix_ops.http import redis_ping, unix_get_ok

    s, p = deployment.settings, deployment.paths
    py = sys.executable

    layout = workers.local_layout(s, p)

    def synapse(name: str) -> ManagedProcess:
        sock = layout.public[name].path
        return ManagedProcess(
            "synapse" if name == workers.MAIN else f"synapse-{name}",
            workers.synapse_argv(py, p, name),
            p.logs / ("synapse.out" if name == workers.MAIN else f"synapse-{name}.out"),
            p.synapse_dir,
            f"unix:{sock}:/health",
            health_check=lambda: unix_get_ok(sock, "/health"),
        )

    redis: list[ManagedProcess] = []
    if not s.redis:
        sock = str(workers.redis_socket(p))
        redis.append(
            ManagedProcess("redis", workers.redis_argv(p), p.logs / "redis.out", workers.redis_dir(p),
                           f"unix:{sock}", health_check=lambda: redis_ping(sock))
        )
    proxy = ManagedProcess(
        "proxy", workers.nginx_argv(p), p.logs / "proxy.out", workers.proxy_dir(p),
        f"{s.homeserver_url}/_matrix/client/versions",
    )
    return redis, synapse(workers.MAIN), [synapse(w.name) for w in layout.topology], proxy


class Stack:
    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        s, p = deployment.settings, deployment.paths
        py = sys.executable
        # Started together after the main process, in a worker deployment.
        self.synapse_workers: list[ManagedProcess] = []
        before: list[ManagedProcess] = []  # Redis
        after: list[ManagedProcess] = []  # the proxy
        if s.workers:
            before, self.synapse, self.synapse_workers, proxy = _worker_processes(deployment)
            after = [proxy]
        else:
            self.synapse = ManagedProcess(
                "synapse",
                [py, "-m", "synapse.app.homeserver", "-c", str(p.homeserver_config)],
                p.logs / "synapse.out",
                p.synapse_dir,
                f"{s.homeserver_url}/_matrix/client/versions",
            )
        self.appservice = ManagedProcess(
            "appservice",
            [py, "-m", "appservice", "-c", str(p.appservice_config)],
            p.logs / "appservice.out",
            p.appservice_dir,
            f"{s.appservice_url}/_carematrix/health",
        )
        # Started before the appservice, which reads from them; stopped after it.
        self.demo_systems = _demo_processes(deployment) if s.carematrix_enabled else []
        self.turn = _turn_process(deployment)
        homeserver = [*before, self.synapse, *self.synapse_workers, *after]
        self.processes = (
            [*self.turn, *homeserver, *self.demo_systems, self.appservice] if s.carematrix_enabled else homeserver
        )

    def start(self, timeout: float = 180.0) -> None:
        check_ports(self.deployment.settings)
        for proc in self.processes:
            if proc in self.synapse_workers:
                continue
            proc.start()
            self._wait_healthy(proc, timeout)
            if proc is self.synapse and self.synapse_workers:
                # The main process has brought the schema up to date; the workers start together.
                for worker in self.synapse_workers:
                    worker.start()
                for worker in self.synapse_workers:
                    self._wait_healthy(worker, timeout)

    def process(self, name: str) -> ManagedProcess:
        """A supervised process by its name (``synapse-client1``, ``proxy``, ...)."""
        for proc in self.processes:
            if proc.name == name:
                return proc
        raise KeyError(name)

    def _wait_healthy(self, proc: ManagedProcess, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                self.stop()
                raise StartupFailed(f"{proc.name} exited during start-up; last output:\n{proc.tail()}")
            if proc.healthy():
                return
            time.sleep(0.2)
        self.stop()
        raise StartupFailed(f"{proc.name} was not healthy after {timeout:.0f}s; see {proc.log_path}")

    def supervise(self, should_stop: Callable[[], bool], poll: float = 0.5) -> None:
        """Restart a crashed process, unless it keeps crashing."""
        while not should_stop():
            for proc in self.processes:
                if proc.alive():
                    continue
                now = time.monotonic()
                proc.crashes = [t for t in proc.crashes if now - t < RESTART_WINDOW_SECONDS] + [now]
                if len(proc.crashes) > RESTART_LIMIT:
                    raise StartupFailed(
                        f"{proc.name} crashed {len(proc.crashes)} times in {RESTART_WINDOW_SECONDS:.0f}s; "
                        f"giving up. Last output:\n{proc.tail()}"
                    )
                log.error("%s exited unexpectedly; restarting", proc.name)
                print(f"{proc.name} exited unexpectedly (see {proc.log_path}); restarting", flush=True)
                proc.start()
            time.sleep(poll)

    def restart_synapse(self, timeout: float = 180.0) -> None:
        """Start Synapse again after it stopped or was killed (durability tests)."""
        self.synapse.start()
        self._wait_healthy(self.synapse, timeout)

    @property
    def background_synapse(self) -> ManagedProcess:
        """The Synapse process that runs background work (burns, checkpoints, retention):
        the background worker in a worker deployment, else the one Synapse process."""
        from carematrix_ops.deploy.workers import TOPOLOGY, with_duty

        name = f"synapse-{with_duty(TOPOLOGY, 'background')}"
        return next((w for w in self.synapse_workers if w.name == name), self.synapse)

    def restart(self, proc: ManagedProcess, timeout: float = 180.0) -> None:
        """Start a process again after it stopped or was killed (durability tests)."""
        proc.start()
        self._wait_healthy(proc, timeout)

    def restart_appservice(self, timeout: float = 180.0) -> None:
        self.appservice.start()
        self._wait_healthy(self.appservice, timeout)

    def stop(self) -> None:
        # The appservice first, so it does not hammer a homeserver that is going away.
        for proc in reversed(self.processes):
            proc.stop()

