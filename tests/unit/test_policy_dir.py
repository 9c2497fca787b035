"""Which policy a deployment uses: the checkout's for `make run`; in an installed package the
data dir's own, copied from the demo hospital on the first start and never again."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from carematrix_ops import cli, resources
from carematrix_ops.cli import common
from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.settings import Settings
from tests.paths import DEMO_POLICY_DIR
from tests.support import same_tree


def module_policy_dirs(homeserver_yaml: Path) -> set[str]:
    config = yaml.safe_load(homeserver_yaml.read_text())
    return {m["config"]["policy_dir"] for m in config["modules"]}


def test_a_checkout_runs_on_its_own_policies_folder(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "var")
    assert settings.policy_dir == DEMO_POLICY_DIR
    deployment = prepare(settings)
    assert module_policy_dirs(deployment.paths.homeserver_config) == {str(DEMO_POLICY_DIR)}
    assert not (tmp_path / "var" / "policies").exists()


def test_installed_the_first_start_copies_the_demo_policy_into_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "CHECKOUT", None)
    monkeypatch.setattr(resources, "demo_policy", lambda: DEMO_POLICY_DIR)  # the wheel's copy
    data_dir = tmp_path / "var"
    deployment = prepare(Settings(data_dir=data_dir))
    own = data_dir / "policies"
    assert deployment.settings.policy_dir == own
    assert same_tree(own, DEMO_POLICY_DIR)
    assert module_policy_dirs(deployment.paths.homeserver_config) == {str(own)}
    assert [p.name for p in data_dir.iterdir() if p.name.startswith(".policies-")] == []


def test_an_admins_edits_are_never_overwritten(tmp_path: Path):
    data_dir = tmp_path / "var"
    own = data_dir / "policies"
    prepare(Settings(data_dir=data_dir, policy_dir=own))
    staff = own / "staff.yaml"
    edited = staff.read_text() + "# edited by the admin\n"
    staff.write_text(edited)
    (own / "rooms.yaml").unlink()  # split differently; still one valid policy with the rest
    (own / "extra.yaml").write_text((DEMO_POLICY_DIR / "rooms.yaml").read_text())
    prepare(Settings(data_dir=data_dir, policy_dir=own))
    assert staff.read_text() == edited
    assert not (own / "rooms.yaml").exists()


def test_a_data_dir_that_lost_its_policy_does_not_come_back_as_the_demo_hospital(tmp_path: Path):
    data_dir = tmp_path / "var"
    own = data_dir / "policies"
    prepare(Settings(data_dir=data_dir, policy_dir=own))
    for path in own.rglob("*"):
        if path.is_file():
            path.unlink()
    for path in sorted(own.rglob("*"), reverse=True):
        path.rmdir()
    own.rmdir()
    with pytest.raises(DeployError, match="is missing; restore it from backup"):
        prepare(Settings(data_dir=data_dir, policy_dir=own))
    assert not own.exists()


def test_a_named_policy_dir_that_does_not_exist_is_refused(tmp_path: Path):
    missing = tmp_path / "etc" / "policies"
    with pytest.raises(DeployError, match=f"policy directory {missing} does not exist"):
        prepare(Settings(data_dir=tmp_path / "var", policy_dir=missing))
    assert not missing.exists()
    assert not (tmp_path / "var").exists()


def test_installed_commands_ask_for_a_data_dir_they_have_no_default_for(monkeypatch, capsys):
    monkeypatch.setattr(resources, "CHECKOUT", None)
    monkeypatch.delenv("CAREMATRIX_DATA_DIR", raising=False)
    monkeypatch.delenv("CAREMATRIX_POLICY_DIR", raising=False)
    assert cli.main(["status"]) == common.EXIT_USAGE
    assert "no data dir: pass --data-dir DIR or set CAREMATRIX_DATA_DIR" in capsys.readouterr().err
    assert cli.main(["policy", "check"]) == common.EXIT_USAGE
    assert "no policy directory: name it, or set CAREMATRIX_POLICY_DIR" in capsys.readouterr().err


def test_installed_policy_check_reads_the_data_dirs_policy(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(resources, "CHECKOUT", None)
    monkeypatch.setattr(resources, "demo_policy", lambda: DEMO_POLICY_DIR)
    monkeypatch.setenv("CAREMATRIX_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CAREMATRIX_POLICY_DIR", raising=False)
    resources.copy_demo_policy(tmp_path / "policies")
    assert cli.main(["policy", "check"]) == common.EXIT_OK
    assert capsys.readouterr().out.startswith(f"OK: {tmp_path / 'policies'}: ")
