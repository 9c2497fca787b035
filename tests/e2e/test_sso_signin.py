"""Signing in with the hospital's single sign-on (OIDC), end to end: a stack of its own
(SQLite, no demo passwords: staff have SSO only) whose Synapse sends staff to a stand-in
identity provider (tests/oidc_idp.py) and maps them by staff number to the accounts org sync
created.

For Element the browser's part is played over HTTP: the SSO redirect, the IdP, Synapse's
callback, its "continue" page, then the login token exchanged for an access token. The
operations console's SSO sign-in is driven in a real browser (Playwright, Debian's Chromium).
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

from carematrix_ops.http import HttpError, request_json
from tests.e2e.test_console import BASE, WIDE, browser, nav_keys, screens, shot  # noqa: F401 - fixtures
from tests.e2e.test_org import as_bot
from tests.e2e.test_protection import db_rows
from tests.oidc_idp import HospitalIdp, start_idp
from tests.support import RunningStack, eventually, start_stack, stop_stack

pytest.importorskip("playwright")
from playwright.async_api import Browser  # noqa: E402

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
    # demo=False: org sync gives the accounts no password, as at a hospital that signs in by SSO only.
    running = start_stack("sqlite", tmp_path_factory.mktemp("stack-sso"), oidc=idp.settings(), demo=False)
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
    # The console's own SSO callback gets its login token without Synapse's "continue" page.
    assert config["sso"]["client_whitelist"] == [config["public_baseurl"] + "_carematrix/console/login/sso/callback"]
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
    log = sso_stack.deployment.paths.synapse_log
    log_start = log.stat().st_size
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
    # A sign-in leaves nothing an operator would read as a fault: no error, and the request
    # kept its logging context (metrics, the request ID on every line) throughout.
    with log.open("rb") as f:
        f.seek(log_start)
        lines = f.read().decode("utf-8", "replace").splitlines()
    faults = [line for line in lines if " - ERROR - " in line or "sentinel context" in line or "Traceback" in line]
    assert not faults, "\n".join(faults)


async def test_someone_not_on_the_staff_list_is_refused(sso_stack: RunningStack, idp: HospitalIdp):
    log = sso_stack.deployment.paths.synapse_log
    log_start = log.stat().st_size
    status, page, token = await sso_flow(sso_stack, idp, "idp-user-outsider", {"employee_number": "X9999"})
    assert token is None
    assert status >= 400
    assert "X9999 is not on this hospital&#39;s staff list" in page or "X9999 is not on this hospital's staff list" in page
    # The operator reads why, as a WARNING: the staff list doing its job is not a server fault.
    with log.open("rb") as f:
        f.seek(log_start)
        lines = f.read().decode("utf-8", "replace").splitlines()
    assert [line for line in lines if " - WARNING - " in line
            and "SSO sign-in refused: Staff number X9999 is not on this hospital's staff list" in line], lines
    faults = [line for line in lines if " - ERROR - " in line or "Traceback" in line]
    assert not faults, "\n".join(faults)


async def test_no_staff_number_claim_is_refused(sso_stack: RunningStack, idp: HospitalIdp):
    status, page, token = await sso_flow(sso_stack, idp, "idp-user-nameless", {"name": "Somebody"})
    assert token is None and status >= 400
    assert "employee_number" in page


def console(stack: RunningStack) -> str:
    return public_base(stack) + BASE


def audit(stack: RunningStack, action: str, actor: str | None = None) -> list[dict]:
    """The audit trail's rows of one action (read from the database: on this stack nobody
    has a password for the audit CLI's sign-in)."""
    rows = db_rows(stack, "SELECT actor, object, rule, details FROM carematrix_audit_log WHERE action = ?", action)
    return [{"actor": a, "object": o, "rule": r, "details": json.loads(d)} for a, o, r, d in rows
            if actor is None or a == actor]


async def test_sso_only_staff_sign_in_to_the_console_through_the_hospital_sso(
    sso_stack: RunningStack, idp: HospitalIdp, browser: Browser, screens  # noqa: F811 - fixtures
):
    user = sso_stack.user_id("n3002")
    # 赵敏 Zhao Min has no password here: the console's password form cannot sign her in.
    with pytest.raises(HttpError) as refused:
        request_json("POST", sso_stack.url + "/_matrix/client/v3/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "n3002"},
            "password": sso_stack.deployment.secrets.get("demo_password") or "no-password-at-all"})
    assert refused.value.status == 403
    idp.sign_in_next("idp-user-zhao-min", {"employee_number": "N3002"})
    page = await (await browser.new_context(viewport=WIDE, locale="zh-CN")).new_page()
    await page.goto(console(sso_stack) + "/")
    assert page.url.endswith(f"{BASE}/login")
    button = page.locator("a.sso-button")
    assert "使用医院统一身份认证登录 Sign in with hospital SSO" in await button.inner_text()
    assert "Hospital sign-in" in await button.inner_text()  # the IdP's name, from the login flows
    # Passwords stay on for the admin account, so the form is there too, below the button.
    assert await page.locator("input[name=password]").count() == 1
    await shot(page, screens, "login-sso-wide")
    await button.click()
    await page.wait_for_url(re.compile(r".*/board$"))
    # Signed in as herself, with the pages her roles open (charge nurse), and no other.
    assert "赵敏 Zhao Min (N3002)" in await page.inner_text("header")
    assert await nav_keys(page) == {"board", "alerts", "fatigue"}
    response = await page.goto(console(sso_stack) + "/alerts")
    assert response is not None and response.status == 200
    response = await page.goto(console(sso_stack) + "/audit")
    assert response is not None and response.status == 403
    assert "console.audit_auditor_only" in await page.inner_text("main")
    await shot(page, screens, "sso-signed-in-wide")
    # On record as a console sign-in by SSO; the Matrix device the token made is gone.
    signed = await eventually(lambda: [
        r for r in audit(sso_stack, "console.sign_in", user) if r["details"].get("how") == "sso"])
    assert signed and signed[-1]["object"] == "console"
    logins = await eventually(lambda: audit(sso_stack, "auth.login", user))
    assert {r["details"]["type"] for r in logins} == {"m.login.token"}
    devices = as_bot(sso_stack, "GET", f"/_synapse/admin/v2/users/{user}/devices")["devices"]
    assert not [d for d in devices if d.get("display_name") == "CareMatrix console"], devices
    # Sign-out ends the console session, as for a password sign-in.
    await page.click("form.who button[type=submit]")
    await page.wait_for_url(re.compile(r".*/login$"))
    await page.context.close()


async def test_a_console_sso_callback_with_a_wrong_state_is_refused(
    sso_stack: RunningStack, idp: HospitalIdp, browser: Browser, screens  # noqa: F811 - fixtures
):
    """Login CSRF: someone signs in as themselves and sends a colleague's browser to the
    console's callback with their login token. The colleague's browser started a sign-in of
    its own (its state differs), so the console refuses, on record, without using the token."""
    _, _, stolen = await sso_flow(sso_stack, idp, "idp-user-liu-yang", {"employee_number": "D1002"})
    assert stolen
    context = await browser.new_context(viewport=WIDE, locale="zh-CN")
    # The victim's browser has clicked the SSO button (its state cookie is set); the IdP is
    # not visited: the redirect to Synapse is not followed.
    started = await context.request.get(console(sso_stack) + "/login/sso?idp=oidc-hospital", max_redirects=0)
    assert started.status == 303 and "/login/sso/redirect/oidc-hospital?redirectUrl=" in started.headers["location"]
    assert any(c["name"] == "carematrix_console_sso" for c in await context.cookies())
    page = await context.new_page()
    response = await page.goto(f"{console(sso_stack)}/login/sso/callback?state=forged-state&loginToken={stolen}")
    assert response is not None and response.status == 403
    error = await page.inner_text("p.error")
    assert error.startswith("登录请求无效") and "console.sso_state" in error  # Chinese first, the rule named
    await shot(page, screens, "login-sso-refused-wide")
    # Not signed in as anyone: the console sends the browser back to the sign-in page.
    await page.goto(console(sso_stack) + "/board")
    assert page.url.endswith(f"{BASE}/login")
    assert not [c for c in await context.cookies() if c["name"] == "carematrix_console"]
    refusals = await eventually(lambda: [
        r for r in audit(sso_stack, "policy.denied")
        if r["rule"] == "console.sso_state" and r["object"] == "console/login/sso"])
    assert refusals
    # The console did not use the token: it still signs its owner in (to where they asked).
    code, body = await exchange(sso_stack, stolen)
    assert code == 200 and body["user_id"] == sso_stack.user_id("d1002")
    await context.close()


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
