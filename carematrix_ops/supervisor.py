"""Start, watch and stop the stack's processes (Synapse, the appservice and, in demo mode,
the demo hospital's EMR and PACS).

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


class Stack:
    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        s, p = deployment.settings, deployment.paths
        py = sys.executable
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
        self.processes = (
            [self.synapse, *self.demo_systems, self.appservice] if s.carematrix_enabled else [self.synapse]
        )

    def start(self, timeout: float = 180.0) -> None:
        check_ports(self.deployment.settings)
        for proc in self.processes:
            proc.start()
            self._wait_healthy(proc, timeout)

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

    def restart_appservice(self, timeout: float = 180.0) -> None:
        self.appservice.start()
        self._wait_healthy(self.appservice, timeout)

    def stop(self) -> None:
        # The appservice first, so it does not hammer a homeserver that is going away.
        for proc in reversed(self.processes):
            proc.stop()

