"""Signing in with the hospital directory (LDAP), end to end: a stack of its own (SQLite)
whose staff sign in with their directory password only, against a private slapd.

The directory holds people on the staff list and one who is not (X9999); Synapse's own
password database is off (``local_passwords: false``), yet ``carematrix up``'s seeding and
the CLI still sign in as the tooling admin account.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from nio import AsyncClient, LoginError, LoginResponse

from carematrix_ops.http import HttpError, request_json
from tests.ldap_server import LdapServer, start_ldap
from tests.support import RunningStack, eventually, start_stack, stop_stack

CLI = str(Path(sys.executable).parent / "carematrix")
PASSWORDS = {
    "D1001": "Ldap-Secret-1",
    "A0002": "Auditor-Secret-2",  # the auditor, to search the trail through the CLI
    "L4001": "Lab-Secret-3",
    "P5001": "Pharmacy-Secret-4",
    "X9999": "Outsider-Secret-9",  # in the directory, not on the staff list
}


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LdapServer]:
    server = start_ldap(tmp_path_factory.mktemp("slapd"))
    try:
        for number, password in PASSWORDS.items():
            server.add_person(number, f"Staff {number}", password)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ldap_stack(directory: LdapServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(
        "sqlite", tmp_path_factory.mktemp("stack-ldap"),
        ldap={
            "uri": directory.uri, "base_dn": directory.base_dn,
            "bind_dn": directory.admin_dn, "bind_password": directory.admin_password,
            "user_filter": "(objectClass=inetOrgPerson)",
        },
    )
    try:
        yield running
    finally:
        stop_stack(running)


async def login(stack: RunningStack, user: str, password: str) -> LoginResponse | LoginError:
    client = AsyncClient(stack.url, user)
    try:
        return await client.login(password, device_name="ldap-e2e")
    finally:
        await client.close()


def as_bot(stack: RunningStack, method: str, path: str, body: dict | None = None) -> dict:
    return request_json(method, stack.url + path, body, token=stack.deployment.secrets["as_token"])


def test_the_stack_seeds_with_synapse_passwords_off(ldap_stack: RunningStack):
    """Seeding signed in as the tooling admin (the fixture got this far) although Synapse's
    password database is off; the service password is not copied into deployment.json."""
    paths = ldap_stack.deployment.paths
    config = yaml.safe_load(paths.homeserver_config.read_text())
    assert config["password_config"]["localdb_enabled"] is False
    assert [m["module"] for m in config["modules"]][-1] == "synapse_modules.ldap_auth.CareMatrixLdapAuth"
    assert ldap_stack.seed.created_users
    recorded = json.loads(paths.deployment.read_text())
    assert recorded["ldap"]["bind_dn"] and "bind_password" not in recorded["ldap"]


@pytest.mark.parametrize("typed", ["d1001", "D1001", "@d1001:{server}"])
async def test_staff_sign_in_with_their_directory_password(ldap_stack: RunningStack, typed: str):
    resp = await login(ldap_stack, typed.format(server=ldap_stack.server_name), PASSWORDS["D1001"])
    assert isinstance(resp, LoginResponse), resp
    assert resp.user_id == ldap_stack.user_id("d1001")


async def test_a_wrong_or_empty_password_is_refused(ldap_stack: RunningStack):
    for password in ("Ldap-Secret-2", ""):
        resp = await login(ldap_stack, "d1001", password)
        assert isinstance(resp, LoginError) and resp.status_code == "M_FORBIDDEN", resp


async def test_synapse_passwords_open_nothing(ldap_stack: RunningStack):
    """The demo password does not work, and no password can be set in Synapse (not even by
    an admin): the directory's is the only one."""
    demo = await login(ldap_stack, "d1001", ldap_stack.deployment.secrets["demo_password"])
    assert isinstance(demo, LoginError) and demo.status_code == "M_FORBIDDEN", demo
    user = quote(ldap_stack.user_id("d1001"))
    with pytest.raises(HttpError) as refused:
        as_bot(ldap_stack, "PUT", f"/_synapse/admin/v2/users/{user}", {"password": "Local-Secret-7", "logout_devices": False})
    assert refused.value.status == 403 and "Password change disabled" in str(refused.value)
    assert isinstance(await login(ldap_stack, "d1001", PASSWORDS["D1001"]), LoginResponse)


async def test_someone_not_on_the_staff_list_cannot_sign_in(ldap_stack: RunningStack):
    resp = await login(ldap_stack, "x9999", PASSWORDS["X9999"])
    assert isinstance(resp, LoginError) and resp.status_code == "M_FORBIDDEN", resp
    # Nor by borrowing the bot's or an on-duty role's name.
    for name in ("carematrix", "role-cardiology"):
        resp = await login(ldap_stack, name, PASSWORDS["D1001"])
        assert isinstance(resp, LoginError) and resp.status_code == "M_FORBIDDEN", resp


async def test_a_deactivated_account_stays_shut(ldap_stack: RunningStack):
    assert isinstance(await login(ldap_stack, "l4001", PASSWORDS["L4001"]), LoginResponse)
    as_bot(ldap_stack, "POST", f"/_synapse/admin/v1/deactivate/{quote(ldap_stack.user_id('l4001'))}", {"erase": False})
    resp = await login(ldap_stack, "l4001", PASSWORDS["L4001"])
    assert isinstance(resp, LoginError) and resp.status_code == "M_USER_DEACTIVATED", resp


def test_failed_sign_ins_are_on_record_for_the_auditor(ldap_stack: RunningStack):
    """The auditor signs in to the CLI with her directory password, and finds X9999's attempt."""
    result = subprocess.run(
        [CLI, "audit", "search", "--login", "a0002", "--actor", ldap_stack.user_id("x9999"),
         "--action", "auth.login_failed", "--format", "json",
         "--data-dir", str(ldap_stack.deployment.settings.data_dir)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "CAREMATRIX_PASSWORD": PASSWORDS["A0002"]},
    )
    assert result.returncode == 0, result.stderr
    failed = json.loads(result.stdout)
    assert failed and failed[0]["outcome"] == "denied"
    assert PASSWORDS["X9999"] not in result.stdout


async def test_a_leaver_is_refused_as_soon_as_the_staff_list_drops_them(ldap_stack: RunningStack):
    """The directory may still know a leaver; the staff list decides (reloaded while running)."""
    assert isinstance(await login(ldap_stack, "p5001", PASSWORDS["P5001"]), LoginResponse)
    staff = ldap_stack.policy_dir / "staff.yaml"
    original = staff.read_text(encoding="utf-8")
    entry = original.index("  - staff_number: P5001")
    end = original.find("\n  - ", entry + 1)
    staff.write_text(original[:entry] + (original[end + 1:] if end != -1 else ""), encoding="utf-8")
    try:
        async def refused_by_the_module() -> bool:
            # M_FORBIDDEN, not M_USER_DEACTIVATED: the checker itself refused, whether or not
            # org sync has deactivated the account yet.
            resp = await login(ldap_stack, "p5001", PASSWORDS["P5001"])
            return isinstance(resp, LoginError) and resp.status_code == "M_FORBIDDEN"

        await eventually(refused_by_the_module)
    finally:
        staff.write_text(original, encoding="utf-8")


async def test_a_directory_outage_refuses_and_never_falls_back(ldap_stack: RunningStack, directory: LdapServer):
    """Last in this file: it stops the directory."""
    directory.stop()
    resp = await login(ldap_stack, "d1001", PASSWORDS["D1001"])
    assert isinstance(resp, LoginError) and resp.status_code == "M_FORBIDDEN", resp
    log = ldap_stack.deployment.paths.synapse_log.read_text(errors="replace")
    assert "LDAP sign-in for @d1001:" in log and "refused, directory problem" in log
