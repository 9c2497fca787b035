"""LDAP sign-in, the pure part: a bad configuration is refused naming the key, logins map to
people on the staff list only, and the directory search can never be widened by a login."""

from __future__ import annotations

import hashlib

import pytest
from synapse.module_api.errors import ConfigError

from carematrix.ldap_login import (
    LdapConfigError,
    parse_ldap_config,
    search_filter,
    staff_number_for_login,
)
from carematrix.policy import load_policy
from synapse_modules.ldap_auth import CareMatrixLdapAuth
from tests.paths import DEMO_POLICY_DIR

GOOD = {"uri": "ldaps://ldap.hospital.example", "base_dn": "ou=people,dc=hospital,dc=example"}


@pytest.fixture(scope="module")
def policy():
    return load_policy(DEMO_POLICY_DIR)


def test_minimal_config_gets_the_documented_defaults():
    config = parse_ldap_config(GOOD)
    assert config.uri == "ldaps://ldap.hospital.example"
    assert config.staff_number_attribute == "employeeNumber"
    assert config.user_filter is None
    assert config.bind_dn is None and config.bind_password is None
    assert config.start_tls is False and config.local_passwords is False
    assert config.timeout_seconds == 5
    assert config.uses_tls


def test_full_config():
    config = parse_ldap_config({
        **GOOD, "uri": "ldap://ldap.hospital.example:389/", "staff_number_attribute": "hisStaffId",
        "user_filter": " (objectClass=inetOrgPerson) ", "bind_dn": "cn=matrix,ou=services,dc=hospital,dc=example",
        "bind_password": "s3rvice", "start_tls": True, "timeout_seconds": 2.5, "local_passwords": True,
    })
    assert config.uri == "ldap://ldap.hospital.example:389"
    assert config.user_filter == "(objectClass=inetOrgPerson)"
    assert config.bind_dn == "cn=matrix,ou=services,dc=hospital,dc=example"
    assert config.start_tls and config.uses_tls and config.local_passwords
    assert config.timeout_seconds == 2.5
    assert "s3rvice" not in repr(config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": "ldap://x"}, "unknown LDAP key(s) url"),
        ({"uri": None}, "'uri' is required"),
        ({"uri": "http://ldap.hospital.example"}, "'uri' must start with ldap:// or ldaps://"),
        ({"uri": "ldap://"}, "'uri' must name a host"),
        ({"uri": "ldap://ldap.example:notaport"}, "'uri' has an invalid port"),
        ({"uri": "ldap://ldap.example/ou=people,dc=x"}, "'uri' must be only scheme, host and port"),
        ({"base_dn": ""}, "'base_dn' is required"),
        ({"base_dn": "not a dn"}, "'base_dn' is not a valid DN"),
        ({"staff_number_attribute": "employee number"}, "'staff_number_attribute' must be an LDAP attribute name"),
        ({"user_filter": "objectClass=person"}, "'user_filter' must be one parenthesised LDAP filter"),
        ({"user_filter": "(objectClass=person))("}, "'user_filter' must be one parenthesised LDAP filter"),
        ({"user_filter": ["(a=b)"]}, "'user_filter' must be an LDAP filter"),
        ({"bind_password": "x"}, "'bind_password' is set but 'bind_dn' is not"),
        ({"bind_dn": "cn=matrix,dc=example"}, "'bind_dn' is set but 'bind_password' is missing or empty"),
        ({"bind_dn": "cn=matrix,dc=example", "bind_password": ""}, "'bind_password' is missing or empty"),
        ({"bind_dn": "junk", "bind_password": "x"}, "'bind_dn' is not a valid DN"),
        ({"start_tls": "yes"}, "'start_tls' must be true or false"),
        ({"start_tls": True}, "'start_tls' cannot be used with an ldaps:// 'uri'"),
        ({"local_passwords": 1}, "'local_passwords' must be true or false"),
        ({"timeout_seconds": 0}, "'timeout_seconds' must be a number of seconds above 0"),
        ({"timeout_seconds": 120}, "at most 60"),
        ({"timeout_seconds": True}, "'timeout_seconds' must be a number"),
        ({"tls_ca_file": "/nonexistent/ca.pem"}, "'tls_ca_file' /nonexistent/ca.pem does not exist"),
        ({"uri": "ldap://ldap.example", "tls_ca_file": "/etc/hostname"}, "'tls_ca_file' is only used with"),
    ],
)
def test_bad_config_names_the_key(change, message):
    with pytest.raises(LdapConfigError) as exc:
        parse_ldap_config({**GOOD, **change})
    assert message in str(exc.value)


def test_config_must_be_a_mapping():
    with pytest.raises(LdapConfigError, match="must be a mapping"):
        parse_ldap_config(["uri"])  # type: ignore[arg-type]


@pytest.mark.parametrize("login", ["D1001", "d1001", "@d1001:hospital.example", "@D1001:Hospital.Example"])
def test_logins_map_to_the_staff_number(policy, login):
    assert staff_number_for_login(login, policy, "hospital.example") == "D1001"


@pytest.mark.parametrize(
    "login",
    ["X9999", "", "@d1001", "@d1001:other.example", "carematrix-admin", "carematrix", "role-cardiology", "*", "d1001 "],
)
def test_logins_of_people_not_on_the_staff_list_map_to_nothing(policy, login):
    assert staff_number_for_login(login, policy, "hospital.example") is None


def test_without_a_server_name_any_matrix_id_form_is_read(policy):
    assert staff_number_for_login("@n3001:anything", policy) == "N3001"


def test_filter_escapes_the_staff_number():
    config = parse_ldap_config(GOOD)
    assert search_filter(config, "D1001") == "(employeeNumber=D1001)"
    hostile = search_filter(config, "*)(uid=*")
    assert hostile == r"(employeeNumber=\2a\29\28uid=\2a)"
    assert "*" not in hostile and hostile.count("(") == 1 == hostile.count(")")
    assert search_filter(config, "a\\b\x00") == r"(employeeNumber=a\5cb\00)"


def test_filter_adds_the_operators_user_filter():
    config = parse_ldap_config({**GOOD, "user_filter": "(objectClass=inetOrgPerson)", "staff_number_attribute": "uid"})
    assert search_filter(config, "*") == r"(&(uid=\2a)(objectClass=inetOrgPerson))"


MODULE = {"policy_dir": str(DEMO_POLICY_DIR), "ldap": GOOD}


def test_module_config():
    digest = hashlib.sha256(b"admin").hexdigest()
    config = CareMatrixLdapAuth.parse_config(
        {**MODULE, "admin_user_id": "@carematrix-admin:localhost", "admin_password_sha256": digest}
    )
    assert config.ldap.base_dn == GOOD["base_dn"] and config.admin_password_sha256 == digest


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"policy_dirr": "x"}, "unknown key(s) policy_dirr"),
        ({"policy_dir": "/nonexistent"}, "policy directory does not exist"),
        ({"ldap": {**GOOD, "uri": "ftp://x"}}, "'ldap': 'uri' must start with ldap:// or ldaps://"),
        ({"admin_user_id": "@carematrix-admin:localhost"}, "'admin_user_id' and 'admin_password_sha256' go together"),
        ({"admin_user_id": "admin", "admin_password_sha256": "0" * 64}, "'admin_user_id' must be a Matrix user ID"),
        ({"admin_user_id": "@a:b", "admin_password_sha256": "secret"}, "'admin_password_sha256' must be 64"),
    ],
)
def test_bad_module_config_is_a_config_error(change, message):
    with pytest.raises(ConfigError) as exc:
        CareMatrixLdapAuth.parse_config({**MODULE, **change})
    assert message in str(exc.value)


def test_module_config_needs_the_ldap_settings():
    with pytest.raises(ConfigError, match="'ldap' is required"):
        CareMatrixLdapAuth.parse_config({"policy_dir": MODULE["policy_dir"]})


def test_a_bad_ldap_config_stops_deployment_before_anything_is_written(tmp_path):
    from carematrix_ops.deploy.errors import DeployError
    from carematrix_ops.deploy.prepare import prepare
    from carematrix_ops.deploy.settings import Settings

    with pytest.raises(DeployError, match="LDAP configuration .* 'uri' must start with ldap://"):
        prepare(Settings(data_dir=tmp_path / "var", ldap={**GOOD, "uri": "https://ldap"}))
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize("local_passwords", [False, True])
def test_deployment_renders_the_module_and_password_config(tmp_path, local_passwords):
    import yaml

    from carematrix_ops.deploy.prepare import prepare
    from carematrix_ops.deploy.settings import Settings

    deployment = prepare(
        Settings(data_dir=tmp_path / "var", hl7_port=0, ldap={**GOOD, "local_passwords": local_passwords})
    )
    config = yaml.safe_load(deployment.paths.homeserver_config.read_text())
    assert config["password_config"] == {"enabled": True, "localdb_enabled": local_passwords}
    module = config["modules"][-1]
    assert module["module"] == "synapse_modules.ldap_auth.CareMatrixLdapAuth"
    assert CareMatrixLdapAuth.parse_config(module["config"]).admin_user_id == deployment.admin_user_id
    admin_hash = hashlib.sha256(deployment.secrets["admin_password"].encode()).hexdigest()
    assert module["config"]["admin_password_sha256"] == admin_hash
    appservice = yaml.safe_load(deployment.paths.appservice_config.read_text())
    # One shared demo password must not sit on accounts the directory alone guards.
    assert (appservice["org"]["initial_password"] is not None) == local_passwords


def test_without_ldap_synapse_keeps_its_passwords(tmp_path):
    import yaml

    from carematrix_ops.deploy.prepare import prepare
    from carematrix_ops.deploy.settings import Settings

    deployment = prepare(Settings(data_dir=tmp_path / "var", hl7_port=0))
    config = yaml.safe_load(deployment.paths.homeserver_config.read_text())
    assert config["password_config"]["localdb_enabled"] is True
    assert all("ldap" not in m["module"] for m in config["modules"])


def test_cli_reads_the_ldap_file_and_the_bind_password_from_the_environment(tmp_path, monkeypatch):
    from carematrix_ops.cli.up_settings import ldap_settings
    from carematrix_ops.deploy.errors import DeployError

    path = tmp_path / "ldap.yaml"
    path.write_text("uri: ldaps://ldap.hospital.example\nbase_dn: dc=hospital,dc=example\nbind_dn: cn=matrix,dc=hospital,dc=example\n")
    monkeypatch.setenv("CAREMATRIX_LDAP_BIND_PASSWORD", "from-env")
    assert ldap_settings(path)["bind_password"] == "from-env"
    path.write_text(path.read_text() + "bind_password: in-file\n")
    with pytest.raises(DeployError, match="both in .* and in CAREMATRIX_LDAP_BIND_PASSWORD"):
        ldap_settings(path)
    monkeypatch.delenv("CAREMATRIX_LDAP_BIND_PASSWORD")
    assert ldap_settings(path)["bind_password"] == "in-file"
    path.write_text("- not a mapping\n")
    with pytest.raises(DeployError, match="must be a mapping"):
        ldap_settings(path)
    with pytest.raises(DeployError, match="cannot read --ldap-config"):
        ldap_settings(tmp_path / "missing.yaml")
