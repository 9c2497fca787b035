"""The LDAP sign-in module's decisions, with a stand-in for Synapse's module API: who is
passed to the directory at all, the tooling account, and that every surprise refuses."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

import synapse_modules.ldap_auth as ldap_auth
from synapse_modules.ldap_auth import CareMatrixLdapAuth
from synapse_modules.ldap_directory import DirectoryVerdict
from tests.paths import DEMO_POLICY_DIR

ADMIN = "@carematrix-admin:hospital.example"
ADMIN_PASSWORD = "generated-admin-secret"


class FakeApi:
    server_name = "hospital.example"

    def __init__(self, accounts: set[str]) -> None:
        self.accounts = accounts
        self.checkers: dict = {}
        self.directory_calls: list[tuple[str, str]] = []

    def register_password_auth_provider_callbacks(self, auth_checkers: dict) -> None:
        self.checkers.update(auth_checkers)

    def looping_background_call(self, *args, **kwargs) -> None:
        pass

    async def check_user_exists(self, user_id: str) -> str | None:
        return user_id if user_id in self.accounts else None

    async def defer_to_thread(self, f, *args):
        return f(*args)


@pytest.fixture
def module(monkeypatch):
    config = CareMatrixLdapAuth.parse_config({
        "policy_dir": str(DEMO_POLICY_DIR),
        "ldap": {"uri": "ldap://127.0.0.1:1", "base_dn": "dc=hospital,dc=example"},
        "admin_user_id": ADMIN,
        "admin_password_sha256": hashlib.sha256(ADMIN_PASSWORD.encode()).hexdigest(),
    })
    api = FakeApi({ADMIN, "@d1001:hospital.example"})

    def directory(config, staff_number, password):
        api.directory_calls.append((staff_number, password))
        if password == "explode":
            raise RuntimeError("bug")
        if password == "Ldap-Secret-1":
            return DirectoryVerdict(True, "password accepted", "uid=d1001")
        return DirectoryVerdict(False, "wrong password", "uid=d1001")

    monkeypatch.setattr(ldap_auth, "directory_check_password", directory)
    return CareMatrixLdapAuth(config, api), api


def check(module, username: str, password: object):
    auth, _ = module
    return asyncio.run(auth.check_password(username, "m.login.password", {"password": password}))


def test_registers_for_password_logins(module):
    auth, api = module
    assert api.checkers == {("m.login.password", ("password",)): auth.check_password}


@pytest.mark.parametrize("typed", ["d1001", "D1001", "@d1001:hospital.example"])
def test_staff_with_the_directory_password(module, typed):
    assert check(module, typed, "Ldap-Secret-1") == ("@d1001:hospital.example", None)
    assert module[1].directory_calls == [("D1001", "Ldap-Secret-1")]


@pytest.mark.parametrize(
    ("typed", "password"),
    [
        ("d1001", "wrong"),
        ("d1001", ""),
        ("d1001", None),
        ("d1001", "explode"),  # a bug in the directory code refuses, never lets through
        ("@d1001:elsewhere.example", "Ldap-Secret-1"),
        ("x9999", "Ldap-Secret-1"),
        ("d1002", "Ldap-Secret-1"),  # on the staff list, no account yet
    ],
)
def test_refusals(module, typed, password):
    assert check(module, typed, password) is None


def test_people_not_on_the_staff_list_are_never_looked_up(module, caplog):
    caplog.set_level("WARNING")
    assert check(module, "x9999", "Outsider-Secret") is None
    assert module[1].directory_calls == []
    assert "not on the staff list" in caplog.text and "Outsider-Secret" not in caplog.text


@pytest.mark.parametrize("typed", ["carematrix-admin", "@carematrix-admin:hospital.example", "CareMatrix-Admin"])
def test_the_tooling_account_signs_in_with_its_generated_password(module, typed):
    assert check(module, typed, ADMIN_PASSWORD) == (ADMIN, None)
    assert check(module, typed, ADMIN_PASSWORD + "x") is None
    assert module[1].directory_calls == []
