"""What must hold before anything is written: a writable data dir, a policy directory,
free ports."""

from __future__ import annotations

import socket
from pathlib import Path

from carematrix_ops import resources
from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.settings import Paths, Settings


def check_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeployError(
            f"cannot create data dir {path}: {exc.strerror}; choose another with "
            "--data-dir or CAREMATRIX_DATA_DIR"
        ) from exc
    probe = path / ".write-test"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise DeployError(
            f"data dir {path} is not writable ({exc.strerror}); fix its permissions or choose "
            "another with --data-dir or CAREMATRIX_DATA_DIR"
        ) from exc


def ensure_policy_dir(settings: Settings) -> None:
    """The policy directory must exist; a data dir that is to use its own policies/ gets a
    copy of the demo policy there on its first start (no deployment recorded yet) and never
    later: a data dir that lost its policy must not come back as the demo hospital, whose
    org sync would replace the staff.
    """
    target = settings.policy_path
    if target.is_dir():
        return
    own = settings.data_dir / "policies"
    if target != own:
        raise DeployError(
            f"the policy directory {target} does not exist; pass the right --policy-dir "
            "(or CAREMATRIX_POLICY_DIR)"
        )
    if Paths(settings.data_dir).deployment.exists():
        raise DeployError(
            f"the policy directory {target} of this data dir is missing; restore it from backup "
            "(the demo policy is copied only on a data dir's first start)"
        )
    check_data_dir(settings.data_dir)
    resources.copy_demo_policy(target)


def check_port_free(host: str, port: int, what: str, hint: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DeployError(f"port {port} on {host} ({what}) is already in use: {exc.strerror}; {hint}") from exc


def check_udp_port_free(host: str, port: int, what: str, hint: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DeployError(f"UDP port {port} on {host} ({what}) is already in use: {exc.strerror}; {hint}") from exc


def check_ports(settings: Settings) -> None:
    """Every listening port must be free before anything starts or is written."""
    check_port_free(settings.bind_address, settings.port, "homeserver", "stop what uses it or set CAREMATRIX_PORT / --port")
    if settings.carematrix_enabled:
        check_port_free(
            "127.0.0.1",
            settings.appservice_port,
            "appservice",
            "stop what uses it or set CAREMATRIX_APPSERVICE_PORT / --appservice-port",
        )
        if settings.hl7_port:
            check_port_free(settings.hl7_bind, settings.hl7_port, "HL7 (MLLP)", "stop what uses it or set --hl7-port")
        from carematrix_ops.deploy import turn

        if turn.enabled(settings):
            hint = "stop what uses it (another coturn?) or set --turn-port (0: no TURN server)"
            check_port_free(settings.bind_address, settings.turn_port, "TURN", hint)
            check_udp_port_free(settings.bind_address, settings.turn_port, "TURN", hint)
        if settings.demo_systems:
            hint = "stop what uses it, set --demo-emr-port / --demo-pacs-port, or run with --no-demo-systems"
            check_port_free("127.0.0.1", settings.demo_emr_port, "demo EMR", hint)
            if settings.has_demo_pacs:
                # Orthanc listens on every interface (and refuses remote clients).
                check_port_free("0.0.0.0", settings.demo_pacs_port, "demo PACS", hint)
