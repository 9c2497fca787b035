"""The SSO mapping provider's decisions and the deployment's OIDC settings: who the IdP's
claims map to, who is refused, and that a bad --oidc-config stops before anything is written."""

from __future__ import annotations

import asyncio
import shutil

import pytest
import yaml
from synapse.handlers.sso import MappingException
from synapse.module_api.errors import ConfigError

import synapse_modules.sso_mapping as sso_mapping
from carematrix.policy import load_policy
from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.settings import Settings
from synapse_modules.sso_mapping import CareMatrixSsoMapping, staff_for_claims, subject
from tests.paths import DEMO_POLICY_DIR

POLICY_DIR = str(DEMO_POLICY_DIR)
GOOD = {
    "issuer": "https://sso.hospital.example/",
    "client_id": "carematrix",
    "client_secret": "s3cret",
    "authorization_endpoint": "https://sso.hospital.example/authorize",
    "token_endpoint": "https://sso.hospital.example/token",
    "userinfo_endpoint": "https://sso.hospital.example/userinfo",
}


def mapper(policy_dir: str = POLICY_DIR, **config) -> CareMatrixSsoMapping:
    return CareMatrixSsoMapping(CareMatrixSsoMapping.parse_config({"policy_dir": policy_dir, **config}))


def test_staff_map_to_their_org_account_and_display_name():
    policy = load_policy(DEMO_POLICY_DIR)
    staff = policy.staff_for_localpart("d1001")
    attrs = asyncio.run(mapper().map_user_attributes({"sub": "abc", "employee_number": "D1001"}, {}, 0))
    assert attrs["localpart"] == "d1001"
    assert attrs["display_name"] == policy.display_name(staff)
    assert attrs["confirm_localpart"] is False and attrs["emails"] == []


@pytest.mark.parametrize("typed", ["d1001", " D1001 "])
def test_the_staff_number_is_matched_like_a_localpart(typed):
    policy = load_policy(DEMO_POLICY_DIR)
    assert staff_for_claims({"employee_number": typed}, "employee_number", policy).staff_number == "D1001"


def test_someone_not_on_the_staff_list_is_refused_with_a_clear_message():
    policy = load_policy(DEMO_POLICY_DIR)
    with pytest.raises(MappingException, match="X9999 is not on this hospital's staff list"):
        staff_for_claims({"employee_number": "X9999"}, "employee_number", policy)
    for claims in ({}, {"employee_number": ""}, {"employee_number": ["D1001"]}):
        with pytest.raises(MappingException, match="no 'employee_number' staff number"):
            staff_for_claims(claims, "employee_number", policy)


def test_a_configured_claim_is_used():
    m = mapper(staff_number_claim="hospitalId")
    attrs = asyncio.run(m.map_user_attributes({"sub": "x", "hospitalId": "N3001"}, {}, 0))
    assert attrs["localpart"] == "n3001"
    with pytest.raises(MappingException):
        asyncio.run(m.map_user_attributes({"sub": "x", "employee_number": "N3001"}, {}, 0))


def test_the_remote_user_id_is_the_subject():
    assert mapper().get_remote_user_id({"sub": "idp-42", "employee_number": "D1001"}) == "idp-42"
    assert subject({"sub": 42}) == "42"
    with pytest.raises(MappingException):
        subject({"employee_number": "D1001"})


def test_no_second_name_is_tried_when_the_account_name_is_taken():
    with pytest.raises(MappingException, match="D1001 has no account"):
        asyncio.run(mapper().map_user_attributes({"sub": "a", "employee_number": "D1001"}, {}, 1))


def test_a_leaver_is_refused_on_every_login_after_the_reload(tmp_path, monkeypatch):
    policy_dir = tmp_path / "policies"
    shutil.copytree(DEMO_POLICY_DIR, policy_dir)
    m = mapper(str(policy_dir))
    claims = {"sub": "p", "employee_number": "P5001"}
    assert asyncio.run(m.get_extra_attributes(claims, {})) == {}
    data = yaml.safe_load((policy_dir / "staff.yaml").read_text(encoding="utf-8"))
    data["staff"] = [s for s in data["staff"] if s["staff_number"] != "P5001"]
    (policy_dir / "staff.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    monkeypatch.setattr(sso_mapping, "POLICY_RELOAD_SECONDS", 0)
    with pytest.raises(MappingException, match="P5001 is not on this hospital's staff list"):
        asyncio.run(m.get_extra_attributes(claims, {}))


@pytest.mark.parametrize("config, message", [
    ({"policy_dir": POLICY_DIR, "claim": "x"}, "unknown key"),
    ({"policy_dir": POLICY_DIR, "staff_number_claim": ""}, "staff_number_claim"),
    ({}, "policy_dir"),
])
def test_bad_module_config_is_a_config_error(config, message):
    with pytest.raises(ConfigError, match=message):
        CareMatrixSsoMapping.parse_config(config)


@pytest.mark.parametrize("change, message", [
    ({"client_secret": None}, "missing client_secret .*CAREMATRIX_OIDC_CLIENT_SECRET"),
    ({"token_endpoint": "http://sso.hospital.example/token"}, "'token_endpoint' must be https://"),
    ({"issuer": "sso.hospital.example"}, "'issuer' must be a URL"),
    ({"scope": ["openid"]}, "unknown key"),
    ({"scopes": []}, "'scopes' must be a non-empty list"),
    ({"discover": "yes"}, "'discover' must be true or false"),
    ({"user_profile_method": "id_token"}, "'user_profile_method' must be"),
])
def test_a_bad_oidc_config_stops_deployment_before_anything_is_written(tmp_path, change, message):
    with pytest.raises(DeployError, match=r"OIDC configuration \(--oidc-config\) is invalid: " + message):
        prepare(Settings(data_dir=tmp_path / "var", hl7_port=0, oidc={**GOOD, **change}))
    assert not (tmp_path / "var").exists()


def test_deployment_renders_the_provider_and_keeps_passwords_as_they_are(tmp_path):
    deployment = prepare(Settings(
        data_dir=tmp_path / "var", hl7_port=0, oidc={**GOOD, "client_whitelist": ["https://chat.hospital.example/"]},
    ))
    config = yaml.safe_load(deployment.paths.homeserver_config.read_text())
    [provider] = config["oidc_providers"]
    assert provider["idp_id"] == "hospital" and provider["idp_name"] == "Hospital sign-in"
    assert provider["scopes"] == ["openid", "profile"] and provider["discover"] is False
    assert provider["user_profile_method"] == "userinfo_endpoint"
    assert provider["allow_existing_users"] is True and provider["enable_registration"] is False
    mapping = provider["user_mapping_provider"]
    assert CareMatrixSsoMapping.parse_config(mapping["config"]).staff_number_claim == "employee_number"
    # The hospital's clients, and the console's own callback (no "continue to ..." page there).
    assert config["sso"] == {"client_whitelist": [
        "https://chat.hospital.example/", config["public_baseurl"] + "_carematrix/console/login/sso/callback"]}
    assert config["password_config"] == {"enabled": True, "localdb_enabled": True}
    recorded = (deployment.paths.deployment).read_text()
    assert "s3cret" not in recorded


def test_without_oidc_there_is_no_provider(tmp_path):
    deployment = prepare(Settings(data_dir=tmp_path / "var", hl7_port=0))
    config = yaml.safe_load(deployment.paths.homeserver_config.read_text())
    assert config["oidc_providers"] == [] and config["sso"] == {}


def test_cli_reads_the_oidc_file_and_the_secret_from_the_environment(tmp_path, monkeypatch):
    from carematrix_ops.cli.up_settings import oidc_settings

    path = tmp_path / "oidc.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in GOOD.items() if k != "client_secret"}))
    monkeypatch.setenv("CAREMATRIX_OIDC_CLIENT_SECRET", "from-env")
    assert oidc_settings(path)["client_secret"] == "from-env"
    path.write_text(yaml.safe_dump(GOOD))
    with pytest.raises(DeployError, match="both in .* and in CAREMATRIX_OIDC_CLIENT_SECRET"):
        oidc_settings(path)
    monkeypatch.delenv("CAREMATRIX_OIDC_CLIENT_SECRET")
    assert oidc_settings(path)["client_secret"] == "s3cret"
    path.write_text("- not a mapping\n")
    with pytest.raises(DeployError, match="must be a mapping"):
        oidc_settings(path)
    with pytest.raises(DeployError, match="cannot read --oidc-config"):
        oidc_settings(tmp_path / "missing.yaml")
