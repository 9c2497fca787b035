"""When `carematrix up` brings the demo EMR and PACS, where they listen, and how a deployment
is wired to them (nothing is started here; tests/e2e/test_cli.py runs them)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from carematrix_ops.cli import build_parser
from carematrix_ops.cli.up_settings import up_settings
from carematrix_ops.demo import demo_patients, pacs
from carematrix_ops.deploy import turn
from carematrix_ops.deploy.checks import check_ports
from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.settings import Settings
from carematrix_ops.supervisor import Stack
from tests.ports import free_port_pair

ENV = ("CAREMATRIX_PORT", "CAREMATRIX_APPSERVICE_PORT", "CAREMATRIX_FHIR_SERVER",
       "CAREMATRIX_DICOMWEB", "CAREMATRIX_EMR_ARCHIVE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def orthanc_installed(monkeypatch):
    monkeypatch.setattr(pacs, "installed", lambda: True)


@pytest.fixture
def orthanc_missing(monkeypatch):
    monkeypatch.setattr(pacs, "installed", lambda: False)


def settings_for(*argv: str) -> Settings:
    return up_settings(build_parser().parse_args(["up", "--data-dir", "/tmp/unused", *argv]))


def test_the_demo_hospital_comes_with_its_systems_on_the_next_ports():
    s = settings_for("--port", "18000")
    assert s.demo_systems
    assert (s.appservice_port, s.demo_emr_port, s.demo_pacs_port) == (18001, 18002, 18003)
    assert s.demo_emr_url == "http://127.0.0.1:18002/fhir"


def test_demo_ports_can_be_chosen():
    s = settings_for("--port", "18000", "--demo-emr-port", "19000", "--demo-pacs-port", "19001")
    assert (s.demo_emr_port, s.demo_pacs_port) == (19000, 19001)


@pytest.mark.parametrize(
    "argv",
    [
        ["--no-demo"],
        ["--no-demo-systems"],
        ["--fhir-server", "http://his/fhir"],
        ["--dicomweb", "http://pacs/dicom-web"],
        ["--emr-archive", "http://emr/fhir"],
    ],
)
def test_production_or_real_systems_mean_no_demo_systems(argv):
    assert not settings_for(*argv).demo_systems


def test_a_system_from_the_environment_also_wins(monkeypatch):
    monkeypatch.setenv("CAREMATRIX_DICOMWEB", "http://pacs/dicom-web")
    s = settings_for()
    assert not s.demo_systems and s.dicomweb == "http://pacs/dicom-web"


def systems(deployment) -> dict:
    return yaml.safe_load(deployment.paths.appservice_config.read_text())["systems"]


def test_prepare_connects_the_demo_emr_and_pacs(tmp_path: Path, orthanc_installed):
    d = prepare(Settings(data_dir=tmp_path / "var", port=18100, demo_systems=True))
    wired = systems(d)
    assert wired["fhir_server"] == wired["emr_archive"] == "http://127.0.0.1:18102/fhir"
    assert wired["dicomweb"] == "http://127.0.0.1:18103/dicom-web"
    config = json.loads((tmp_path / "var" / "demo-pacs" / "orthanc.json").read_text())
    assert config["HttpPort"] == 18103 and config["RemoteAccessAllowed"] is False
    assert config["StorageDirectory"] == str(tmp_path / "var" / "demo-pacs" / "storage")
    prepare(d.settings)  # again, as every `up` does: the same URLs are no conflict
    names = [proc.name for proc in Stack(d).processes]
    # stopped in reverse; coturn first when installed (relays calls, needs nothing of ours)
    assert names == [*(["turn"] if turn.installed() else []), "synapse", "demo-emr", "demo-pacs", "appservice"]


def test_without_orthanc_the_demo_has_an_emr_and_no_pacs(tmp_path: Path, orthanc_missing):
    d = prepare(Settings(data_dir=tmp_path / "var", port=18200, demo_systems=True, turn_port=0))
    assert systems(d)["fhir_server"] == "http://127.0.0.1:18202/fhir"
    assert systems(d)["dicomweb"] is None
    assert not (tmp_path / "var" / "demo-pacs").exists()
    assert [proc.name for proc in Stack(d).processes] == ["synapse", "demo-emr", "appservice"]


def test_no_demo_systems_no_demo_processes(tmp_path: Path, orthanc_installed):
    d = prepare(Settings(data_dir=tmp_path / "var", port=18300, turn_port=0))
    assert systems(d)["fhir_server"] is None
    assert [proc.name for proc in Stack(d).processes] == ["synapse", "appservice"]


def test_demo_systems_are_never_mixed_with_real_ones(tmp_path: Path, orthanc_installed):
    with pytest.raises(DeployError, match="--dicomweb connects a real system.*--no-demo-systems"):
        prepare(Settings(data_dir=tmp_path / "var", demo_systems=True, dicomweb="http://pacs/dicom-web"))
    with pytest.raises(DeployError, match="only with the demo hospital"):
        prepare(Settings(data_dir=tmp_path / "var", demo_systems=True, demo=False))
    assert not (tmp_path / "var").exists()


def test_a_busy_demo_port_is_named_before_anything_starts(orthanc_installed):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        s = Settings(data_dir=Path("/tmp/unused"), port=free_port_pair(), hl7_port=0, demo_systems=True,
                     demo_emr_port=taken)
        with pytest.raises(DeployError, match=rf"port {taken} on 127.0.0.1 \(demo EMR\).*--no-demo-systems"):
            check_ports(s)


def test_the_banner_lists_the_patients_the_demo_emr_really_has():
    assert demo_patients() == ["P20261101 王建国", "P20261102 李秀英"]
