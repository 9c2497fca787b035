"""Each Synapse process loads the policy once at start, whichever CareMatrix modules read it,
and polls it for edits with its parse handed to Synapse's thread pool."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from synapse.module_api.errors import ConfigError

import carematrix.policy.holder as holder_module
from synapse_modules import policy_source
from synapse_modules.audit_module import CareMatrixAudit
from synapse_modules.ldap_auth import CareMatrixLdapAuth
from synapse_modules.policy_module import CareMatrixPolicy
from synapse_modules.sso_mapping import CareMatrixSsoMapping
from tests.paths import DEMO_POLICY_DIR


class FakeApi:
    def __init__(self) -> None:
        self.loops: list[tuple] = []

    def looping_background_call(self, f, msec, *args, **kwargs) -> None:
        self.loops.append((f, msec, args, kwargs))

    async def defer_to_thread(self, f, *args):
        return f(*args)


@pytest.fixture
def policy_dir(tmp_path: Path, monkeypatch) -> tuple[Path, list[Path]]:
    shutil.copytree(DEMO_POLICY_DIR, tmp_path / "p")
    loads: list[Path] = []
    real = holder_module.load_policy

    def load(directory):
        loads.append(Path(directory))
        return real(directory)

    monkeypatch.setattr(holder_module, "load_policy", load)
    return tmp_path / "p", loads


def test_every_module_reads_the_one_policy_loaded_when_the_config_is_read(policy_dir, tmp_path):
    directory, loads = policy_dir
    path = str(directory)
    CareMatrixAudit.parse_config({
        "database": "sqlite", "policy_dir": path, "signing_key_path": str(tmp_path / "k"),
        "verify_key_path": str(tmp_path / "v"), "appservice_token": "t",
    })
    CareMatrixPolicy.parse_config({"policy_dir": path, "bot_user_id": "@carematrix:localhost"})
    CareMatrixLdapAuth.parse_config({"policy_dir": path, "ldap": {"uri": "ldap://127.0.0.1:1", "base_dn": "dc=h"}})
    mapper = CareMatrixSsoMapping(CareMatrixSsoMapping.parse_config({"policy_dir": path}))
    assert len(loads) == 1
    assert mapper._holder is policy_source.policy_holder(directory)
    assert len(loads) == 1


def test_edits_are_polled_once_at_the_shortest_interval_asked_and_parsed_in_synapse_threads(policy_dir):
    directory, _ = policy_dir
    api = FakeApi()
    holder = policy_source.keep_fresh(api, directory, 2000)  # e.g. the audit module
    assert policy_source.keep_fresh(api, directory, 2000) is holder  # LDAP sign-in: nothing new
    policy_source.keep_fresh(api, directory, 1000)  # the policy module, configured faster
    assert [(f, msec, args) for f, msec, args, _ in api.loops] == [
        (holder.refresh, 2000, (api.defer_to_thread,)),
        (holder.refresh, 1000, (api.defer_to_thread,)),
    ]
    assert all(kw["run_on_all_instances"] for *_, kw in api.loops)
    assert policy_source.polled(directory)


def test_a_broken_policy_is_a_config_error_and_is_loaded_again_once_fixed(policy_dir):
    directory, loads = policy_dir
    hospital = directory / "hospital.yaml"
    good = hospital.read_text(encoding="utf-8")
    hospital.write_text("hospital: [\n", encoding="utf-8")
    config = {"policy_dir": str(directory), "bot_user_id": "@carematrix:localhost"}
    with pytest.raises(ConfigError, match=f"{hospital}:"):
        CareMatrixPolicy.parse_config(config)
    hospital.write_text(good, encoding="utf-8")
    assert CareMatrixPolicy.parse_config(config).policy_dir == directory
    assert len(loads) == 2
