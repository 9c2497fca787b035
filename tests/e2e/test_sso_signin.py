"""Signing in with the hospital's single sign-on (OIDC), end to end: a stack of its own
(SQLite) whose Synapse sends staff to a stand-in identity provider (tests/oidc_idp.py) and
maps them by staff number to the accounts org sync created.

The browser's part is played over HTTP: the SSO redirect, the IdP, Synapse's callback, its
"continue" page, then the login token exchanged for an access token.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import yaml

from tests.oidc_idp import HospitalIdp, start_idp
from tests.support import RunningStack, eventually, start_stack, stop_stack

CLIENT_REDIRECT = "http://localhost/done"
SSO_REDIRECT = "/_matrix/client/v3/login/sso/redirect/oidc-hospital?redirectUrl=" + CLIENT_REDIRECT


@pytest.fixture(scope="module")
def idp() -> Iterator[HospitalIdp]:
    server = start_idp()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sso_stack(idp: HospitalIdp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack("sqlite", tmp_path_factory.mktemp("stack-sso"), oidc=idp.settings())
    try:
        yield running
    finally:
        stop_stack(running)


def public_base(stack: RunningStack) -> str:
    """Synapse's public_baseurl host: its callback and session cookie live there."""
    return f"http://localhost:{stack.deployment.settings.port}"


async def sso_flow(stack: RunningStack, idp: HospitalIdp, sub: str, claims: dict) -> tuple[int, str, str | None]:
    """Run the browser's side of SSO; returns the last page's status and text, and the login
    token handed to the client (None if Synapse refused)."""
    base = public_base(stack)
    idp.sign_in_next(sub, claims)
    # Browsers treat http://localhost as secure, so they send Synapse's Secure session cookie.
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[base])
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.get(base + SSO_REDIRECT, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            to_idp = resp.headers["Location"]
        assert to_idp.startswith(idp.base + "/authorize?")
        async with http.get(to_idp, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            callback = resp.headers["Location"]
        assert callback.startswith(base + "/_synapse/client/oidc/callback?")
        async with http.get(callback, allow_redirects=False) as resp:
            status, text = resp.status, await resp.text()
            location = resp.headers.get("Location")
    if location is None:
        # Synapse's "Continue to your account" page for clients not on sso.client_whitelist.
        link = re.search(r'href="([^"]*loginToken=[^"]*)"', text)
        location = html.unescape(link.group(1)) if link else None
    if location is None:
        return status, text, None
    assert location.startswith(CLIENT_REDIRECT + "?")
    return status, text, parse_qs(urlsplit(location).query)["loginToken"][0]


async def exchange(stack: RunningStack, token: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            stack.url + "/_matrix/client/v3/login", json={"type": "m.login.token", "token": token}
        ) as resp:
            return resp.status, await resp.json()


def test_homeserver_config_and_no_secret_in_deployment_record(sso_stack: RunningStack):
    paths = sso_stack.deployment.paths
    config = yaml.safe_load(paths.homeserver_config.read_text())
    [provider] = config["oidc_providers"]
    assert provider["idp_id"] == "hospital" and provider["allow_existing_users"] is True
    assert provider["enable_registration"] is False
    assert provider["user_mapping_provider"]["module"] == "synapse_modules.sso_mapping.CareMatrixSsoMapping"
    assert config["password_config"]["localdb_enabled"] is True  # no LDAP: unchanged
    recorded = json.loads(paths.deployment.read_text())
    assert recorded["oidc"]["client_id"] and "client_secret" not in recorded["oidc"]


async def test_login_flows_offer_the_hospital_sso(sso_stack: RunningStack):
    async with aiohttp.ClientSession() as http:
        async with http.get(sso_stack.url + "/_matrix/client/v3/login") as resp:
            flows = (await resp.json())["flows"]
    sso = [f for f in flows if f["type"] == "m.login.sso"]
    assert sso, flows
    assert {"id": "oidc-hospital", "name": "Hospital sign-in"}.items() <= sso[0]["identity_providers"][0].items()


async def test_staff_sign_in_through_the_hospital_sso(sso_stack: RunningStack, idp: HospitalIdp):
    status, page, token = await sso_flow(sso_stack, idp, "idp-user-li-wei", {"employee_number": "D1001"})
    assert token, (status, page)
    code, body = await exchange(sso_stack, token)
    assert code == 200, body
    assert body["user_id"] == sso_stack.user_id("d1001") and body["access_token"]
    # Synapse authenticated to the IdP with the client secret, and sent back its callback.
    assert idp.token_requests[-1]["redirect_uri"] == public_base(sso_stack) + "/_synapse/client/oidc/callback"
    # Signing in again goes through the link Synapse recorded for this IdP subject.
    _, _, again = await sso_flow(sso_stack, idp, "idp-user-li-wei", {"employee_number": "D1001"})
    assert again and (await exchange(sso_stack, again))[1]["user_id"] == sso_stack.user_id("d1001")


async def test_someone_not_on_the_staff_list_is_refused(sso_stack: RunningStack, idp: HospitalIdp):
    status, page, token = await sso_flow(sso_stack, idp, "idp-user-outsider", {"employee_number": "X9999"})
    assert token is None
    assert status >= 400
    assert "X9999 is not on this hospital&#39;s staff list" in page or "X9999 is not on this hospital's staff list" in page


async def test_no_staff_number_claim_is_refused(sso_stack: RunningStack, idp: HospitalIdp):
    status, page, token = await sso_flow(sso_stack, idp, "idp-user-nameless", {"name": "Somebody"})
    assert token is None and status >= 400
    assert "employee_number" in page


async def test_a_leaver_is_refused_although_their_sso_link_remains(sso_stack: RunningStack, idp: HospitalIdp):
    """Synapse skips the mapping for an IdP subject it already linked, so the staff-list
    check must also hold on that path: taking someone off the list ends their SSO sign-in
    without a restart. (Runs last: it edits this stack's staff list.)"""
    claims = {"employee_number": "P5001"}
    _, _, token = await sso_flow(sso_stack, idp, "idp-user-pharmacist", claims)
    assert token and (await exchange(sso_stack, token))[1]["user_id"] == sso_stack.user_id("p5001")
    staff_file = sso_stack.policy_dir / "staff.yaml"
    original = staff_file.read_text(encoding="utf-8")
    data = yaml.safe_load(original)
    data["staff"] = [s for s in data["staff"] if s["staff_number"] != "P5001"]
    staff_file.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")

    async def refused_by_the_staff_list() -> bool:
        # Org sync may deactivate the account first (Synapse's "deactivated" page); either
        # way no login token, and our own check answers once the module has reloaded.
        _, page, token = await sso_flow(sso_stack, idp, "idp-user-pharmacist", claims)
        assert token is None or "P5001 is not on" not in page
        return token is None and "P5001 is not on this hospital" in page

    assert await eventually(refused_by_the_staff_list)
