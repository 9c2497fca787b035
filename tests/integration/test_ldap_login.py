"""LDAP sign-in against a real OpenLDAP (slapd): the directory vouches for a staff member's
password only when exactly one entry holds their staff number, and every doubt refuses."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from carematrix.ldap_login import LdapConfig, parse_ldap_config
from synapse_modules.ldap_directory import check_password, find_entry
from tests.ldap_server import LdapServer, start_ldap
from tests.ports import free_port

PASSWORD = "Ldap-Secret-1"


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LdapServer]:
    server = start_ldap(tmp_path_factory.mktemp("slapd"), tls=True)
    try:
        server.add_person("D1001", "Li Wei", PASSWORD, extra={"departmentNumber": "cardiology"})
        server.add_person("N3001", "Liu Yang", "Nurse-Secret-2", extra={"departmentNumber": "icu"})
        # A broken directory: two entries claim the same staff number.
        server.add_person("D2001", "Chen Jing", "First-Secret-3", uid="chenjing")
        server.add_person("D2001", "Chen Jing (old)", "Second-Secret-4", uid="chenjing-old")
        yield server
    finally:
        server.stop()


def config(directory: LdapServer, **overrides) -> LdapConfig:
    return parse_ldap_config({"uri": directory.uri, "base_dn": directory.base_dn, **overrides})


def service(directory: LdapServer, **overrides) -> LdapConfig:
    """Searching as a service account, as most hospitals configure it."""
    return config(directory, bind_dn=directory.admin_dn, bind_password=directory.admin_password, **overrides)


@pytest.mark.parametrize("make", [config, service], ids=["anonymous-search", "service-account"])
def test_the_right_password_is_accepted(directory, make):
    verdict = check_password(make(directory), "D1001", PASSWORD)
    assert verdict.accepted, verdict
    assert verdict.dn == f"uid=d1001,{directory.people_dn}"


def test_a_wrong_password_is_refused(directory):
    verdict = check_password(service(directory), "D1001", "Ldap-Secret-2")
    assert not verdict.accepted and not verdict.unavailable
    assert verdict.reason == "wrong password"
    assert "Ldap-Secret-2" not in repr(verdict)


def test_another_persons_password_is_refused(directory):
    assert not check_password(service(directory), "D1001", "Nurse-Secret-2").accepted


def test_an_empty_password_is_refused_before_the_directory_is_asked(directory):
    # slapd, like most servers, would answer an empty-password bind as an anonymous success.
    verdict = check_password(config(directory, uri="ldap://127.0.0.1:1"), "D1001", "")
    assert not verdict.accepted and verdict.reason == "empty password"


def test_someone_missing_from_the_directory_is_refused(directory):
    verdict = check_password(service(directory), "D1002", PASSWORD)
    assert not verdict.accepted and not verdict.unavailable
    assert "no directory entry with employeeNumber=D1002" in verdict.reason


def test_two_entries_with_one_staff_number_are_refused_with_either_password(directory):
    for password in ("First-Secret-3", "Second-Secret-4"):
        verdict = check_password(service(directory), "D2001", password)
        assert not verdict.accepted and verdict.unavailable
        assert "more than one directory entry has employeeNumber=D2001" in verdict.reason


@pytest.mark.parametrize("hostile", ["*", "D*", "*)(uid=*", "D1001)(|(uid=*"])
def test_filter_characters_in_a_staff_number_match_nothing(directory, hostile):
    dn, verdict = find_entry(service(directory), hostile)
    assert dn is None and verdict is not None and "no directory entry" in verdict.reason


def test_user_filter_narrows_who_may_sign_in(directory):
    cardiology = service(directory, user_filter="(departmentNumber=cardiology)")
    assert check_password(cardiology, "D1001", PASSWORD).accepted
    assert "no directory entry" in check_password(cardiology, "N3001", "Nurse-Secret-2").reason


def test_another_staff_number_attribute(directory):
    by_uid = service(directory, staff_number_attribute="uid")
    assert check_password(by_uid, "d1001", PASSWORD).accepted


def test_a_wrong_service_password_is_a_directory_problem(directory):
    verdict = check_password(
        config(directory, bind_dn=directory.admin_dn, bind_password="not-it"), "D1001", PASSWORD
    )
    assert not verdict.accepted and verdict.unavailable
    assert f"the service account {directory.admin_dn} cannot bind" in verdict.reason


def test_a_wrong_base_is_a_directory_problem(directory):
    verdict = check_password(service(directory, base_dn="ou=nowhere,dc=hospital,dc=test"), "D1001", PASSWORD)
    assert not verdict.accepted and verdict.unavailable and "search under" in verdict.reason


def test_an_unreachable_directory_refuses_quickly():
    port = free_port()  # nothing listens there
    started = time.monotonic()
    verdict = check_password(
        parse_ldap_config({"uri": f"ldap://127.0.0.1:{port}", "base_dn": "dc=hospital,dc=test", "timeout_seconds": 2}),
        "D1001", PASSWORD,
    )
    assert not verdict.accepted and verdict.unavailable and "unreachable" in verdict.reason
    assert time.monotonic() - started < 10


def test_a_directory_that_never_answers_refuses_within_the_timeout():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # accepts the connection, never speaks LDAP
        port = listener.getsockname()[1]
        started = time.monotonic()
        verdict = check_password(
            parse_ldap_config({"uri": f"ldap://127.0.0.1:{port}", "base_dn": "dc=x", "timeout_seconds": 1}),
            "D1001", PASSWORD,
        )
    assert not verdict.accepted and verdict.unavailable
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("mode", ["start_tls", "ldaps"])
def test_tls_with_the_hospital_ca(directory, mode):
    settings = {"start_tls": True} if mode == "start_tls" else {"uri": directory.ldaps_uri}
    verdict = check_password(service(directory, tls_ca_file=str(directory.ca_file), **settings), "D1001", PASSWORD)
    assert verdict.accepted, verdict


@pytest.mark.parametrize("mode", ["start_tls", "ldaps"])
def test_tls_refuses_a_certificate_it_cannot_verify(directory, mode):
    """ldap3 on its own accepts any certificate; we must not hand passwords to an impostor."""
    settings = {"start_tls": True} if mode == "start_tls" else {"uri": directory.ldaps_uri}
    verdict = check_password(service(directory, **settings), "D1001", PASSWORD)
    assert not verdict.accepted and verdict.unavailable
    assert "CERTIFICATE_VERIFY_FAILED" in verdict.reason


def test_tls_refuses_a_certificate_for_another_host(tmp_path: Path):
    impostor = start_ldap(tmp_path, tls=True, cert_names=("ldap.elsewhere.example",))
    try:
        impostor.add_person("D1001", "Li Wei", PASSWORD)
        verdict = check_password(
            parse_ldap_config({"uri": impostor.uri, "base_dn": impostor.base_dn, "start_tls": True,
                               "tls_ca_file": str(impostor.ca_file)}),
            "D1001", PASSWORD,
        )
    finally:
        impostor.stop()
    assert not verdict.accepted and verdict.unavailable, verdict
    assert "doesn't match" in verdict.reason
