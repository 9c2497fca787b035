"""The operator's commands: `carematrix up` (what `make run` calls), `status`, `policy check`."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from nio import AsyncClient, LoginResponse, RoomSendResponse

from carematrix_ops.demo import DEMO_ACCESSION, DEMO_PATIENT, pacs
from carematrix_ops.deploy import turn
from carematrix_ops.pgadmin import database_url
from tests.paths import DEMO_POLICY_DIR
from tests.ports import TEST_SERVER_URL, free_port_pair, free_port_run
from tests.support import (
    CLI,
    UpProcess,
    drop_pg_databases,
    log_files,
    log_problems,
    log_sizes,
    pg_server_logs,
    port_is_free,
)


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


async def login_and_post(port: int, localpart: str, password: str) -> None:
    client = AsyncClient(f"http://127.0.0.1:{port}", f"@{localpart}:localhost")
    try:
        resp = await client.login(password)
        assert isinstance(resp, LoginResponse), resp
        room = (await client.room_resolve_alias("#announcements:localhost")).room_id
        sent = await client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "Ward round moved to 09:00"})
        assert isinstance(sent, RoomSendResponse), sent
    finally:
        await client.close()


def systems_config(data_dir: Path) -> dict:
    """The hospital systems the deployment pointed the appservice at."""
    return yaml.safe_load((data_dir / "appservice" / "config.yaml").read_text())["systems"]


def studies_by_accession(dicomweb: str, accession: str) -> list[dict]:
    answer = requests.get(f"{dicomweb}/studies", params={"AccessionNumber": accession},
                          headers={"Accept": "application/dicom+json"}, timeout=10)
    assert answer.status_code in (200, 204), answer.text
    return answer.json() if answer.status_code == 200 and answer.content else []


def check_demo_systems(data_dir: Path, port: int, banner: str) -> None:
    """The demo EMR (appservice port + 1) and, with Orthanc installed, the demo PACS
    (appservice port + 2) answer, hold the demo patient and CT, and are connected."""
    emr = f"http://127.0.0.1:{port + 2}/fhir"
    systems = systems_config(data_dir)
    assert systems["fhir_server"] == emr and systems["emr_archive"] == emr
    patient = requests.get(f"{emr}/Patient/{DEMO_PATIENT}", timeout=10)
    assert patient.status_code == 200, patient.text
    assert patient.json()["name"][0]["text"] == "王建国"
    assert f"Try            : as d1001 in #cardiology-team:localhost: !case open {DEMO_PATIENT}" in banner
    if not pacs.installed():
        assert systems["dicomweb"] is None
        assert "Demo PACS      : not installed (apt-get install orthanc orthanc-dicomweb)" in banner
        return
    dicomweb = f"http://127.0.0.1:{port + 3}/dicom-web"
    assert systems["dicomweb"] == dicomweb
    assert f"!images {DEMO_ACCESSION}" in banner
    (study,) = studies_by_accession(dicomweb, DEMO_ACCESSION)  # once, however often up ran
    assert study["00100020"]["Value"] == [DEMO_PATIENT]


async def test_up_runs_the_demo_hospital_and_a_second_run_reuses_everything(tmp_path: Path):
    data_dir = tmp_path / "var"
    port = free_port_run(4)  # homeserver, appservice, demo EMR, demo PACS
    first = UpProcess(data_dir, port)
    try:
        banner = first.wait_ready()
        password = re.search(r"password for all: (\S+)\)", banner).group(1)
        assert f"http://localhost:{port}" in banner
        assert "a0001" in banner and "周明 Zhou Ming" in banner
        assert "Voice messages : record one (Element's microphone) to #role-cardiology-attending:localhost" in banner
        check_demo_systems(data_dir, port, banner)
        await login_and_post(port, "a0001", password)
        status = run_cli("status", "--data-dir", str(data_dir))
        assert status.returncode == 0, status.stdout + status.stderr
        assert "homeserver  OK" in status.stdout and "appservice  OK" in status.stdout
        # The hospital systems, as the appservice checks them (the console's system page too).
        assert "hl7         OK    listening on" in status.stdout, status.stdout
        assert "fhir in     OK    2 configured: EMR" in status.stdout and "fhir emr    OK" in status.stdout
        assert ("pacs        OK" if pacs.installed() else "pacs        --") in status.stdout, status.stdout
        if turn.installed():  # a relay was allocated with the deployment's TURN secret
            assert "turn        OK" in status.stdout, status.stdout
    finally:
        code, rest = first.interrupt()
    assert code == 0, rest
    assert "CareMatrix stopped." in rest
    assert all(port_is_free(port + i) for i in range(4)), "a child process outlived carematrix up"
    secrets_before = (data_dir / "secrets.json").read_text()
    key_before = (data_dir / "synapse" / "signing.key").read_text()
    assert oct((data_dir / "secrets.json").stat().st_mode & 0o777) == "0o600"

    second = UpProcess(data_dir, port)
    try:
        banner = second.wait_ready()
        assert f"password for all: {password})" in banner
        check_demo_systems(data_dir, port, banner)
        await login_and_post(port, "a0001", password)
    finally:
        code, rest = second.interrupt()
    assert code == 0, rest
    assert all(port_is_free(port + i) for i in range(4)), "a child process outlived carematrix up"
    assert (data_dir / "secrets.json").read_text() == secrets_before
    assert (data_dir / "synapse" / "signing.key").read_text() == key_before

    down = run_cli("status", "--data-dir", str(data_dir))
    assert down.returncode == 1
    assert "homeserver  DOWN" in down.stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_up_starts_and_stops_with_no_error_in_any_log(tmp_path: Path, backend: str):
    """`make run` on a fresh data dir: no ERROR and no traceback in Synapse's log, the
    appservice's, the demo EMR's and PACS's output, the console or (PostgreSQL) the database
    server's lines for our databases; not while starting, not while stopping."""
    data_dir = tmp_path / "var"
    port = free_port_run(4)
    db_args: list[str] = []
    dbname = None
    if backend == "postgres":
        dbname = f"carematrix_test_{secrets.token_hex(4)}"
        db_args = ["--database", "postgres", "--db-url", database_url(TEST_SERVER_URL, dbname)]
    pg_before = log_sizes(pg_server_logs()) if dbname else {}
    up = UpProcess(data_dir, port, *db_args)
    try:
        try:
            banner = up.wait_ready()
            logs = log_files(data_dir)
            assert {"homeserver.log", "appservice.log", "synapse.out", "appservice.out", "demo-emr.out"} <= {p.name for p in logs}
            assert ("turn.out" in {p.name for p in logs}) == turn.installed()
            ready = log_sizes(logs)
            assert log_problems(dict.fromkeys(logs, 0), ready) == []
            if dbname:  # the server's lines for our two databases ("user@database ERROR: ...")
                assert log_problems(pg_before, only=f"@{dbname}") == []
            assert not re.search(r"ERROR|Traceback", banner), banner
        finally:
            code, rest = up.interrupt()
        assert code == 0, rest
        assert "CareMatrix stopped." in rest
        assert not re.search(r"ERROR|Traceback", rest), rest
        assert log_problems(ready) == []  # nothing from the shutdown either
        if dbname:
            assert log_problems(pg_before, only=f"@{dbname}") == []
    finally:
        if dbname:
            drop_pg_databases(dbname)


def test_up_without_demo_starts_no_demo_systems(tmp_path: Path):
    data_dir = tmp_path / "var"
    port = free_port_run(4)
    up = UpProcess(data_dir, port, "--no-demo", "--hl7-port", "0")
    try:
        banner = up.wait_ready()
        assert "Demo EMR" not in banner and "Demo PACS" not in banner and "Try   " not in banner
        assert "no FHIR server/PACS/EMR connected" in banner
        systems = systems_config(data_dir)
        assert (systems["fhir_server"], systems["dicomweb"], systems["emr_archive"]) == (None, None, None)
        assert port_is_free(port + 2) and port_is_free(port + 3)
        assert not (data_dir / "logs" / "demo-emr.out").exists()
        assert not (data_dir / "demo-pacs").exists()
    finally:
        code, rest = up.interrupt()
    assert code == 0, rest


def test_up_refuses_a_port_in_use_with_one_clear_line(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("up", "--data-dir", str(tmp_path / "var"), "--port", str(port), "--hl7-port", "0")
    assert result.returncode == 2
    assert f"error: port {port} on 127.0.0.1 (homeserver) is already in use" in result.stderr
    assert not (tmp_path / "var").exists(), "a failed start wrote into the data dir"


def test_up_refuses_an_unwritable_data_dir(tmp_path: Path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    result = run_cli("up", "--data-dir", str(blocker / "var"), "--port", "1", "--hl7-port", "0")
    assert result.returncode == 2
    assert f"cannot create data dir {blocker / 'var'}" in result.stderr


def test_up_reports_unreachable_postgres(tmp_path: Path):
    result = run_cli(
        "up", "--data-dir", str(tmp_path / "var"), "--port", str(free_port_pair()), "--hl7-port", "0",
        "--database", "postgres", "--db-url", "postgresql://postgres@127.0.0.1:1/carematrix",
    )
    assert result.returncode == 2
    assert "cannot reach PostgreSQL at 127.0.0.1:1" in result.stderr
    assert not (tmp_path / "var" / "secrets.json").exists()


def test_up_refuses_an_invalid_policy_and_writes_nothing(tmp_path: Path):
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "hospital.yaml").write_text("hospital:\n  name: Test\nroles: {}\nunits:\n  - id: ward\n    name: Ward\n")
    (policies / "staff.yaml").write_text("staff:\n  - staff_number: N1\n    name: Nurse\n    units: [nowhere]\n    position: nurse\n")
    result = run_cli("up", "--data-dir", str(tmp_path / "var"), "--port", str(free_port_pair()), "--hl7-port", "0", "--policy-dir", str(policies))
    assert result.returncode == 2
    assert f"{policies / 'staff.yaml'}:4: staff member N1 names unknown unit 'nowhere'" in result.stderr
    assert not (tmp_path / "var").exists()


def test_policy_check_accepts_the_shipped_demo_hospital():
    result = run_cli("policy", "check", str(DEMO_POLICY_DIR))
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("OK: ")
    assert "9 staff" in result.stdout


def test_policy_check_lists_every_error_as_file_line_what(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(
        "hospital:\n  name: Test\nroles:\n  announcer: {}\nunits:\n  - id: icu\n    name: ICU\n"
    )
    (tmp_path / "b.yaml").write_text(
        "staff:\n"
        "  - staff_number: N1\n    name: A\n    units: [icu]\n    position: nurse\n"
        "  - staff_number: N1\n    name: B\n    units: [icu]\n    position: nurse\n"
        "room_classes:\n  announcement:\n    post: {roles: [annoucer]}\n    colour: red\n"
    )
    result = run_cli("policy", "check", str(tmp_path))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    b = tmp_path / "b.yaml"
    assert f"{b}:6: staff number 'N1' is used twice (first at line 2)" in lines
    assert any(line.startswith(f"{b}:12: 'post' of room class 'announcement' names unknown role 'annoucer'") for line in lines), lines
    assert any(line.startswith(f"{b}:13: unknown key 'colour' in room class 'announcement'") for line in lines), lines
    assert "3 error(s)" in result.stderr


@pytest.mark.parametrize("content", ["{}", "[]"])
def test_policy_check_rejects_a_directory_without_a_hospital(tmp_path: Path, content: str):
    (tmp_path / "x.yaml").write_text(content)
    result = run_cli("policy", "check", str(tmp_path))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{tmp_path / 'x.yaml'}:1:")


def test_deployment_files_never_hold_placeholders(tmp_path: Path):
    """Rendered configs are complete: every value came from settings or fresh secrets."""
    from carematrix_ops.deploy.prepare import prepare
    from carematrix_ops.deploy.settings import Settings

    d = prepare(Settings(data_dir=tmp_path / "var", port=18500))
    for path in (d.paths.homeserver_config, d.paths.registration, d.paths.appservice_config):
        text = path.read_text()
        assert "${" not in text
        assert d.secrets["as_token"] in d.paths.registration.read_text()
    assert json.loads(d.paths.secrets.read_text())["registration_shared_secret"] in d.paths.homeserver_config.read_text()
