"""The operations console in a real browser (Playwright driving Debian's Chromium) against the
real stack: staff sign in with their hospital password, each sees the pages their roles
open and a 403 page naming the rule for the others, the on-call board shows the roster, a
critical HL7 result sent over MLLP appears on the charge nurse's alerts page, is re-paged
from there (on record) and leaves the open list once acknowledged, and the auditor's search
is itself recorded. Screenshots of every page, at a ward PC's and a phone's width, are
saved under the test run's base temp directory (console-screens/)."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nio import RoomSendResponse, SyncResponse

from carematrix.policy import load_policy
from carematrix_ops.deploy import turn
from carematrix_ops.http import request_json
from tests.clinical_support import ack_code, hl7, send_mllp, team
from tests.e2e.test_org import as_bot
from tests.e2e.test_policy_reload import wait_until_in_force
from tests.e2e.test_protection import db_rows
from tests.oncall_support import notices, set_clock, tomorrow_at
from tests.support import RunningStack, eventually, search

pytest.importorskip("playwright")
from playwright.async_api import Browser, Page, async_playwright  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
BASE = "/_carematrix/console"
WIDE, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def screens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "console-screens"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/services installs it)")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


async def signed_in(browser: Browser, stack: RunningStack, user: str, password: str | None = None,
                    viewport: dict | None = None) -> Page:
    page = await (await browser.new_context(viewport=viewport or WIDE, locale="zh-CN")).new_page()
    await page.goto(f"{stack.url}{BASE}/")
    assert page.url.endswith(f"{BASE}/login")
    await page.fill("input[name=user]", user)
    await page.fill("input[name=password]", password or stack.deployment.secrets["demo_password"])
    await page.click("form button[type=submit]")
    await page.wait_for_url(re.compile(r".*/board$"))
    return page


async def shot(page: Page, screens: Path, name: str) -> None:
    await page.screenshot(path=str(screens / f"{name}.png"), full_page=True)


async def nav_keys(page: Page) -> set[str]:
    hrefs = await page.eval_on_selector_all("header nav a", "els => els.map(e => e.getAttribute('href'))")
    return {h.rsplit("/", 1)[-1] for h in hrefs}


async def test_each_demo_role_sees_its_pages_and_is_refused_the_others(stack: RunningStack, browser: Browser, screens: Path):
    await set_clock(stack, tomorrow_at(10, 0))
    logins = {
        "d1002": {"board"},                 # a doctor: the board only
        "n3001": {"board"},                 # a nurse: the board only
        "n3002": {"board", "alerts", "fatigue"},  # head nurse (charge_nurse)
        "d2001": {"board", "alerts", "fatigue"},  # head of the ICU (charge_nurse)
        "a0002": {"board", "fatigue", "audit"},   # quality officer (auditor)
    }
    for user, allowed in logins.items():
        page = await signed_in(browser, stack, user)
        assert await nav_keys(page) == allowed, user
        for key in ("board", "alerts", "fatigue", "audit", "system"):
            response = await page.goto(f"{stack.url}{BASE}/{key}")
            assert response is not None
            if key in allowed:
                assert response.status == 200, (user, key)
            else:
                assert response.status == 403, (user, key)
                text = await page.inner_text("main")
                assert "无权访问 Not allowed" in text and "console." in text, text
                assert "此次访问已记入审计记录" in text
                if user == "d1002" and key == "alerts":
                    await shot(page, screens, "refused-d1002-alerts")
        await page.context.close()
    # Each refusal is on record with its rule.
    denied = await eventually(lambda: [
        r for r in search(stack, "--actor", stack.user_id("d1002"), "--action", "policy.denied")
        if r["object"] == "console/audit"
    ] or None)
    assert denied[0]["rule"] == "console.audit_auditor_only"
    # The server admin account has no staff record: it opens the system page and every unit's alerts.
    admin = await signed_in(browser, stack, stack.deployment.admin_user_id, stack.deployment.secrets["admin_password"])
    assert await nav_keys(admin) == {"alerts", "system"}
    assert (await admin.goto(f"{stack.url}{BASE}/system")).status == 200  # type: ignore[union-attr]
    assert "策略 Policy in force" in await admin.inner_text("main")
    await shot(admin, screens, "system-admin")
    await admin.context.close()


async def test_a_session_survives_a_homeserver_restart_and_a_signed_out_cookie_is_refused(
    stack: RunningStack, browser: Browser, screens: Path
):
    page = await signed_in(browser, stack, "n3002")
    cookie = next(c for c in await page.context.cookies() if c["name"] == "carematrix_console")
    # The homeserver database holds the session under the cookie's hash, never the cookie.
    stored = db_rows(stack, "SELECT token_hash, user_id, csrf FROM carematrix_console_session WHERE token_hash = ?",
                     hashlib.sha256(cookie["value"].encode()).hexdigest())
    assert [r[1] for r in stored] == [stack.user_id("n3002")]
    everything = db_rows(stack, "SELECT * FROM carematrix_console_session")
    assert not any(cookie["value"] in str(v) for row in everything for v in row)

    stack.stack.synapse.stop()
    stack.stack.restart_synapse()
    # Still signed in: the page opens, and a form posted with the session's token works.
    response = await page.goto(f"{stack.url}{BASE}/alerts")
    assert response is not None and response.status == 200 and page.url.endswith("/alerts")
    assert "赵敏 Zhao Min (N3002)" in await page.inner_text("header")
    await shot(page, screens, "alerts-after-restart-wide")
    await page.click("form.who button[type=submit]")
    await page.wait_for_url(re.compile(r".*/login$"))
    assert not db_rows(stack, "SELECT user_id FROM carematrix_console_session WHERE token_hash = ?",
                       hashlib.sha256(cookie["value"].encode()).hexdigest())

    # The signed-out cookie, presented again (say, copied before the sign-out), opens nothing.
    replay = await browser.new_context(viewport=WIDE)
    await replay.add_cookies([cookie])
    again = await replay.new_page()
    await again.goto(f"{stack.url}{BASE}/alerts")
    assert again.url.endswith(f"{BASE}/login")
    posted = await again.request.post(f"{stack.url}{BASE}/alerts/repage", form={"alert_id": "X", "csrf": "x"},
                                      max_redirects=0)
    assert posted.status == 403 and "请重新登录 Please sign in again" in await posted.text()
    await replay.close()
    assert await eventually(lambda: search(stack, "--actor", stack.user_id("n3002"), "--action", "console.sign_out"))
    await page.context.close()


async def test_the_system_page_shows_the_policy_its_reload_errors_the_org_sync_diff_and_every_part_s_health(
    stack: RunningStack, browser: Browser, screens: Path
):
    good = load_policy(stack.policy_dir).digest
    admin = await signed_in(browser, stack, stack.deployment.admin_user_id, stack.deployment.secrets["admin_password"])
    try:
        response = await admin.goto(f"{stack.url}{BASE}/system")
        assert response is not None and response.status == 200
        policy = await admin.inner_text("#policy")
        assert good in policy and "生效于 In force since" in policy

        # Every part's health, as `carematrix status` reports it.
        async def health() -> dict[str, tuple[str, str]]:
            await admin.goto(f"{stack.url}{BASE}/system")
            rows = await admin.locator("table.health tbody tr").all()
            out = {}
            for row in rows:
                cells = await row.locator("td").all_inner_texts()
                out[cells[0]] = (cells[1], cells[2])
            return out

        # An admission for a ward the policy does not know cannot be delivered: the page shows
        # it as needing a person, and the appservice that reported it is still running.
        patient = f"P{uuid.uuid4().hex[:6].upper()}"
        control, adt = hl7(f"PID|1||{patient}^^^RENHE^MR||无^病区||19700101|M", "PV1|1|I|NOWHERE^01^01")
        assert ack_code(await send_mllp(stack, adt)) == "AA"

        async def undelivered_shown() -> dict[str, tuple[str, str]] | None:
            found = await health()
            row = found.get("未送达消息 Undelivered hospital messages")
            return found if row is not None and control in row[1] else None

        parts = await eventually(undelivered_shown)
        assert parts["未送达消息 Undelivered hospital messages"][0] == "待处理 NEEDS ACTION"
        expected_ok = ["Synapse 主服务器 homeserver", "应用服务 Appservice", "HL7 v2 接收 listener (MLLP)",
                       "FHIR 来源 sources (push)", "FHIR 服务器 server (EMR)", "影像 PACS (DICOMweb)"]
        for name in expected_ok:
            assert parts[name][0] == "正常 OK", (name, parts)
        assert f"listening on 127.0.0.1:{stack.deployment.settings.hl7_port}" in parts["HL7 v2 接收 listener (MLLP)"][1]
        assert "DICOMweb search answered" in parts["影像 PACS (DICOMweb)"][1]
        assert "FHIR 4.0.1" in parts["FHIR 服务器 server (EMR)"][1]
        relay = parts["TURN 通话中继 call relay"]
        if turn.enabled(stack.deployment.settings):
            assert relay[0] == "正常 OK" and "relay allocated at" in relay[1], relay
        else:
            assert relay[0] == "未启用 off", relay
        await shot(admin, screens, "system-wide")

        # What an org sync would change: a member taken out of their unit's room.
        lab = as_bot(stack, "GET", f"/_matrix/client/v3/directory/room/%23laboratory-team:{stack.server_name}")["room_id"]
        as_bot(stack, "POST", f"/_matrix/client/v3/rooms/{lab}/kick", {"user_id": stack.user_id("l4001"), "reason": "drift"})
        await admin.goto(f"{stack.url}{BASE}/system")
        diff = await admin.inner_text("#org-sync")
        assert "+ @l4001 joins #laboratory-team" in diff, diff
        members = as_bot(stack, "GET", f"/_matrix/client/v3/rooms/{lab}/joined_members")["joined"]
        assert stack.user_id("l4001") not in members, "the dry run changed the room"
        await shot(admin, screens, "system-org-diff-wide")
        synced = request_json("POST", f"{stack.deployment.settings.appservice_url}/_carematrix/org/sync", {},
                              token=stack.deployment.secrets["as_token"])
        assert "+ @l4001 joins #laboratory-team" in synced["actions"]  # and the room is whole again

        # A broken policy edit: the page names the file and the line, and the last good policy stays.
        rooms = stack.policy_dir / "rooms.yaml"
        original = rooms.read_text(encoding="utf-8")
        try:
            rooms.write_text("room_classes:\n  announcement:\n    description: x\n    post:\n      roles: [everyone]\n",
                             encoding="utf-8")

            async def rejected() -> str | None:
                await admin.goto(f"{stack.url}{BASE}/system")
                text = await admin.inner_text("#reload")
                return text if "修改被拒绝" in text else None

            text = await eventually(rejected)
            assert f"{rooms}:5" in text and "unknown role 'everyone'" in text, text
            assert good in await admin.inner_text("#policy")
            await shot(admin, screens, "system-rejected-wide")
            await admin.set_viewport_size(PHONE)
            assert await admin.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            await shot(admin, screens, "system-rejected-phone")
            await admin.set_viewport_size(WIDE)
        finally:
            rooms.write_text(original, encoding="utf-8")
            wait_until_in_force(stack, good)

        async def accepted() -> bool:
            await admin.goto(f"{stack.url}{BASE}/system")
            return "已生效 Accepted" in await admin.inner_text("#reload")

        assert await eventually(accepted)
    finally:
        await admin.context.close()


async def test_wrong_password_is_refused_on_the_sign_in_page(stack: RunningStack, browser: Browser, screens: Path):
    page = await (await browser.new_context(viewport=PHONE)).new_page()
    await page.goto(f"{stack.url}{BASE}/login")
    response = await page.goto(f"{stack.url}{BASE}/board")
    assert page.url.endswith("/login") and response is not None
    await page.fill("input[name=user]", "n3001")
    await page.fill("input[name=password]", "not-the-password")
    await page.click("form button[type=submit]")
    await page.wait_for_selector(".error")
    assert "工号或密码不正确 Wrong staff number or password." in await page.inner_text(".error")
    await shot(page, screens, "sign-in-refused-phone")
    cookies = await page.context.cookies()
    assert not [c for c in cookies if c["name"] == "carematrix_console"]
    await page.context.close()


async def test_board_shows_who_is_on_duty_now_and_next_and_the_roster_gaps(stack: RunningStack, browser: Browser, screens: Path):
    await set_clock(stack, tomorrow_at(10, 0))
    for name, viewport in (("wide", WIDE), ("phone", PHONE)):
        page = await signed_in(browser, stack, "n3001", viewport=viewport)
        nurse = page.locator("article[data-role='icu/nurse']")
        text = await nurse.inner_text()
        # The ICU roster (policies/rosters/icu.csv): 08:00-20:00, nobody overnight.
        assert "刘洋 Liu Yang (N3001)" in text and "20:00" in text, text
        assert "无人 nobody (gap)" in text and "24小时内空缺 Gaps in the next 24 h" in text
        attending = await page.locator("article[data-role='cardiology/attending']").inner_text()
        assert "当前 Now" in attending and "下一班 Next" in attending
        cookie = next(c for c in await page.context.cookies() if c["name"] == "carematrix_console")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        response = await page.goto(f"{stack.url}{BASE}/board")
        assert response is not None
        csp = (await response.all_headers())["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"], f"the board scrolls sideways at {viewport['width']} px"
        await shot(page, screens, f"board-{name}")
        await page.context.close()
    # At the shift boundary (20:00) the board changes: the ICU nurse's role is a gap now.
    await set_clock(stack, tomorrow_at(20, 1))
    page = await signed_in(browser, stack, "n3001")
    text = await page.locator("article[data-role='icu/nurse']").inner_text()
    assert "无人值班 NOBODY — roster gap" in text and "刘洋 Liu Yang (N3001)" in text.split("下一班 Next")[1], text
    assert await page.locator("article.gap[data-role='icu/nurse']").count() == 1
    await shot(page, screens, "board-gap-wide")
    await page.context.close()
    await set_clock(stack, tomorrow_at(10, 0))


async def test_critical_result_appears_is_repaged_and_leaves_on_acknowledgement(
    stack: RunningStack, browser: Browser, screens: Path
):
    await set_clock(stack, tomorrow_at(10, 0))
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    page = await signed_in(browser, stack, "d2001")  # the ICU's unit head sees the ICU's alerts
    try:
        icu = await team(stack, nurse, "icu")
        patient = f"P{uuid.uuid4().hex[:6].upper()}"
        _, adt = hl7(f"PID|1||{patient}^^^RENHE^MR||黄^美玲||19580101|F", "PV1|1|I|ICU^05^05")
        assert ack_code(await send_mllp(stack, adt)) == "AA"
        _, oru = hl7(
            f"PID|1||{patient}^^^RENHE^MR||黄^美玲||19580101|F",
            "OBR|1|ORD9|LAB9|BMP^Basic metabolic panel|||202611251000|||||||||D2001",
            "OBX|1|NM|2823-3^Potassium||7.1|mmol/L|3.5-5.3|HH|||F",
            kind="ORU^R01", facility="LIS",
        )
        assert ack_code(await send_mllp(stack, oru)) == "AA"

        async def cards() -> list[str]:
            await page.goto(f"{stack.url}{BASE}/alerts")
            found = page.locator("section:has(h2:has-text('未确认 Open')) article.alert")
            return [t for t in await found.all_inner_texts() if patient in t]

        open_cards = await eventually(lambda: _at_least(cards, 2))
        assert all("黄美玲" in c and "第 1/" in c for c in open_cards), open_cards
        assert any("重症医学科 · 责任护士" in c for c in open_cards)
        assert patient not in page.url
        await shot(page, screens, "alerts-open-wide")

        # Re-page the nurse's page from the console: the page notice goes out again.
        card = page.locator("article.alert", has_text=patient).filter(has_text="责任护士").first
        alert_id = await card.get_attribute("data-alert")
        await card.locator("button", has_text="再次呼叫 Re-page").click()
        await page.wait_for_selector(".ok")
        assert f"已再次呼叫 Re-paged {alert_id}" in await page.inner_text(".ok")

        async def repaged() -> bool:
            return any("Re-paged from the console by 陈静 Chen Jing (D2001)" in n["content"]["body"]
                       for n in await notices(nurse, icu))

        assert await eventually(repaged)
        recorded = await eventually(lambda: [
            r for r in search(stack, "--actor", stack.user_id("d2001"), "--action", "console.repage")
            if r["details"].get("alert") == alert_id
        ] or None)
        assert recorded[0]["object"] == "icu/nurse"

        # Both paged roles acknowledge (the policy's acknowledged_when: all): the cards leave.
        for client, who in ((nurse, "n3001"), (doctor, "d2001")):
            for n in await notices(client, icu):
                c = n["content"]
                if c.get("org.carematrix.page") and patient in c["body"] and stack.user_id(who) in c.get("m.mentions", {}).get("user_ids", []):
                    sent = await client.room_send(icu, "m.reaction", {"m.relates_to": {
                        "rel_type": "m.annotation", "event_id": n["event_id"], "key": "✅"}})
                    assert isinstance(sent, RoomSendResponse)
        assert await eventually(lambda: _none_left(cards))
        closed = page.locator("section:has(h2:has-text('已结束 Closed')) article.alert", has_text=patient)
        assert "已确认 Acknowledged" in (await closed.first.inner_text())
        await shot(page, screens, "alerts-acknowledged-wide")
        await page.set_viewport_size(PHONE)
        await shot(page, screens, "alerts-phone")
    finally:
        await nurse.close()
        await doctor.close()
        await page.context.close()


async def test_a_page_handed_over_from_the_console_reaches_the_new_person_whose_reaction_closes_it(
    stack: RunningStack, browser: Browser, screens: Path
):
    """The ICU's unit head hands the ICU nurse's page for a critical result to the head of
    cardiology, who is not an ICU member: he is paged in a direct chat with the role (he may
    not join the ICU's room), and his 👍 there closes the page."""
    await set_clock(stack, tomorrow_at(10, 0))
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    senior = await stack.login("d1001")
    page = await signed_in(browser, stack, "d2001")
    alert_id = ""
    try:
        icu = await team(stack, nurse, "icu")
        patient = f"P{uuid.uuid4().hex[:6].upper()}"
        _, oru = hl7(
            f"PID|1||{patient}^^^RENHE^MR||郭^丽华||19600101|F", "PV1|1|I|ICU^07^07",
            "OBR|1|ORD8|LAB8|BMP^Basic metabolic panel|||202611251000|||||||||D2001",
            "OBX|1|NM|2823-3^Potassium||7.3|mmol/L|3.5-5.3|HH|||F",
            kind="ORU^R01", facility="LIS",
        )
        assert ack_code(await send_mllp(stack, oru)) == "AA"

        async def nurse_card() -> str | None:
            await page.goto(f"{stack.url}{BASE}/alerts")
            card = page.locator("section:has(h2:has-text('未确认 Open')) article.alert", has_text=patient).filter(
                has_text="责任护士")
            return await card.first.get_attribute("data-alert") if await card.count() else None

        alert_id = await eventually(nurse_card)
        card = page.locator(f"article.alert[data-alert='{alert_id}']").first
        await card.locator("input[name=to]").fill("d1001")
        await card.locator("button", has_text="转交 Hand over").click()
        await page.wait_for_selector(".ok")
        assert f"已转交 Handed over {alert_id} → 李伟 Li Wei (D1001)" in await page.inner_text(".ok")
        assert patient not in page.url
        # Its escalation now runs from the new person: the current step waits on him.
        handed_card = await page.locator(f"article.alert[data-alert='{alert_id}']").first.inner_text()
        assert "step 1 of 3: 李伟 Li Wei (D1001)" in handed_card, handed_card
        await shot(page, screens, "alerts-handover-wide")

        # The new person's client has the page (he accepts the direct chat it comes in, as in
        # Element): its text and priority, Chinese first.
        async def handed_page() -> tuple[str, dict] | None:
            synced = await senior.sync(timeout=1000)
            for room_id in list(synced.rooms.invite if isinstance(synced, SyncResponse) else {}):
                await senior.join(room_id)
            for room_id in list(senior.rooms):
                for n in await notices(senior, room_id):
                    c = n["content"]
                    if (c.get("org.carematrix.alert_id") == alert_id and "转交给您 handed over to you" in c["body"]
                            and stack.user_id("d1001") in c.get("m.mentions", {}).get("user_ids", [])):
                        return room_id, n
            return None

        direct, notice = await eventually(handed_page)
        assert direct != icu
        body = notice["content"]["body"]
        assert body.startswith(f"危急呼叫 CRITICAL PAGE [{alert_id}]") and "郭丽华" in body, body
        assert "陈静 Chen Jing (D2001)" in body and notice["content"]["org.carematrix.priority"] == "critical"
        assert notice["content"].get("org.carematrix.page") is True

        # The room, the sender and the nurse paged before are told who took over and who handed it over.
        async def told() -> dict | None:
            return next((n for n in await notices(nurse, icu)
                         if f"呼叫 [{alert_id}] 已转交 Page handed over" in n["content"]["body"]), None)

        room_notice = (await eventually(told))["content"]
        assert "李伟 Li Wei (D1001) 接手 takes over" in room_notice["body"]
        assert "转交人 handed over by 陈静 Chen Jing (D2001)" in room_notice["body"]
        assert stack.user_id("n3001") in room_notice["m.mentions"]["user_ids"]

        # The new person's 👍 on the page acknowledges it; the console shows it closed, and by whom.
        sent = await senior.room_send(direct, "m.reaction", {"m.relates_to": {
            "rel_type": "m.annotation", "event_id": notice["event_id"], "key": "👍"}})
        assert isinstance(sent, RoomSendResponse)

        async def closed() -> str | None:
            await page.goto(f"{stack.url}{BASE}/alerts")
            found = page.locator(f"section:has(h2:has-text('已结束 Closed')) article.alert[data-alert='{alert_id}']")
            return await found.first.inner_text() if await found.count() else None

        text = await eventually(closed)
        assert "已确认 Acknowledged" in text and "确认 Acknowledged 李伟 Li Wei (D1001)" in text, text
        await shot(page, screens, "alerts-handover-closed-wide")
        await page.set_viewport_size(PHONE)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], "the alerts page scrolls sideways on a phone"
        await shot(page, screens, "alerts-handover-closed-phone")

        # On record: who handed which page to whom, under which rule, for which patient.
        recorded = await eventually(lambda: [
            r for r in search(stack, "--actor", stack.user_id("d2001"), "--action", "console.handover")
            if r["details"].get("alert") == alert_id
        ] or None)
        assert recorded[0]["rule"] == "console.handover_charge_only" and recorded[0]["patient"] == patient
        assert recorded[0]["details"]["to"] == "D1001" and recorded[0]["object"] == "icu/nurse"
        assert await eventually(lambda: [
            r for r in search(stack, "--actor", stack.user_id("d1001"), "--action", "appservice.page.acknowledged")
            if r["details"].get("by") == "reaction" and r["object"] == "icu/nurse"
        ] or None)
    finally:
        # The doctor's own page for this result is acknowledged too, so nothing escalates later.
        for n in await notices(doctor, icu):
            c = n["content"]
            if (c.get("org.carematrix.page") and patient in c["body"] and c.get("org.carematrix.alert_id") != alert_id
                    and stack.user_id("d2001") in c.get("m.mentions", {}).get("user_ids", [])):
                await doctor.room_send(icu, "m.reaction", {"m.relates_to": {
                    "rel_type": "m.annotation", "event_id": n["event_id"], "key": "✅"}})
        await nurse.close()
        await doctor.close()
        await senior.close()
        await page.context.close()


async def test_each_charge_nurse_sees_the_alerts_of_their_units_and_an_admin_sees_all(
    stack: RunningStack, browser: Browser, screens: Path
):
    await set_clock(stack, tomorrow_at(10, 0))
    icu_patient, ward_patient = (f"P{uuid.uuid4().hex[:6].upper()}" for _ in range(2))
    _, adt = hl7(f"PID|1||{ward_patient}^^^RENHE^MR||冯^建华||19550101|M", "PV1|1|I|5A^12^01")
    assert ack_code(await send_mllp(stack, adt)) == "AA"
    for patient, pv1 in ((icu_patient, "PV1|1|I|ICU^09^09"), (ward_patient, "PV1|1|I|5A^12^01")):
        _, oru = hl7(
            f"PID|1||{patient}^^^RENHE^MR||冯^建华||19550101|M", pv1,
            "OBR|1|ORD6|LAB6|BMP^Basic metabolic panel|||202611251000|||||||||D1001",
            "OBX|1|NM|2823-3^Potassium||6.8|mmol/L|3.5-5.3|HH|||F",
            kind="ORU^R01", facility="LIS",
        )
        assert ack_code(await send_mllp(stack, oru)) == "AA"

    async def seen_by(page: Page) -> set[str]:
        await page.goto(f"{stack.url}{BASE}/alerts")
        texts = await page.locator("section:has(h2:has-text('未确认 Open')) article.alert").all_inner_texts()
        return {p for p in (icu_patient, ward_patient) if any(p in t for t in texts)}

    admin = await signed_in(browser, stack, stack.deployment.admin_user_id, stack.deployment.secrets["admin_password"])
    assert await eventually(lambda: _all_of(seen_by(admin), {icu_patient, ward_patient}))
    assert "全院 Whole hospital" in await admin.inner_text("#scope")
    assert await admin.locator("form.handover").count() == 0  # an admin sees, the ward acts
    await shot(admin, screens, "alerts-admin-wide")
    await admin.context.close()
    for who, sees in (("n3002", {ward_patient}), ("d1001", {ward_patient}), ("d2001", {icu_patient})):
        page = await signed_in(browser, stack, who)
        assert await seen_by(page) == sees, who
        if who == "n3002":
            assert "心内科5A病区 Cardiology Ward 5A" in await page.inner_text("#scope")
            await shot(page, screens, "alerts-ward-5a-wide")
            # Nor may she act on the ICU's alert by posting its ID.
            icu_head = await signed_in(browser, stack, "d2001")
            await icu_head.goto(f"{stack.url}{BASE}/alerts")
            icu_alert = await icu_head.locator("article.alert", has_text=icu_patient).first.get_attribute("data-alert")
            await icu_head.context.close()
            token = await page.get_attribute("form.who input[name=csrf]", "value")
            refused = await page.request.post(f"{stack.url}{BASE}/alerts/repage",
                                              form={"csrf": token or "", "alert_id": icu_alert or ""})
            assert refused.status == 403 and "console.alerts_own_units" in await refused.text()
        await page.context.close()


async def _all_of(found: object, wanted: set[str]) -> bool:
    return wanted <= await found  # type: ignore[operator]


async def test_a_hand_over_is_refused_to_a_role_without_the_right_and_the_rule_named(
    stack: RunningStack, browser: Browser
):
    page = await signed_in(browser, stack, "n3001")  # a nurse: no charge_nurse role
    token = await page.get_attribute("form.who input[name=csrf]", "value")
    response = await page.request.post(f"{stack.url}{BASE}/alerts/handover",
                                       form={"csrf": token or "", "alert_id": "ABCDEF", "to": "N3001"})
    text = await response.text()
    assert response.status == 403 and "console.handover_charge_only" in text and "转交 Hand over" in text
    assert await eventually(lambda: [
        r for r in search(stack, "--actor", stack.user_id("n3001"), "--action", "policy.denied")
        if r["object"] == "console/alerts/handover" and r["rule"] == "console.handover_charge_only"
    ] or None)
    await page.context.close()


async def test_fatigue_report_counts_this_weeks_pages_with_charts_and_csv(stack: RunningStack, browser: Browser, screens: Path):
    # Two critical results on this week's clock: each pages the ICU nurse and the ICU doctor.
    await set_clock(stack, tomorrow_at(10, 0))
    for _ in range(2):
        patient = f"P{uuid.uuid4().hex[:6].upper()}"
        _, oru = hl7(
            f"PID|1||{patient}^^^RENHE^MR||吴^芳||19700101|F", "PV1|1|I|ICU^06^06",
            "OBR|1|ORD7|LAB7|BMP^Basic metabolic panel|||202611251000|||||||||D2001",
            "OBX|1|NM|2823-3^Potassium||6.9|mmol/L|3.5-5.3|HH|||F",
            kind="ORU^R01", facility="LIS",
        )
        assert ack_code(await send_mllp(stack, oru)) == "AA"
    page = await signed_in(browser, stack, "n3002")

    async def nurse_row() -> dict | None:
        await page.goto(f"{stack.url}{BASE}/fatigue")
        row = page.locator("table[data-kind='role'] tr[data-who='icu/nurse'][data-period='week']").first
        if not await row.count():
            return None
        cells = await row.locator("td").all_inner_texts()
        return {"pages": int(cells[1]), "critical": int(cells[2])} if int(cells[1]) >= 2 else None

    row = await eventually(nurse_row)
    assert row["critical"] == row["pages"]  # every critical result pages at critical priority
    assert await page.locator("table[data-kind='person'] tr[data-who='N3001']").count() >= 1
    assert "刘洋 Liu Yang (N3001)" in await page.inner_text("table[data-kind='person']")
    for chart in ("shifts", "tta"):
        loaded = await page.evaluate(f"document.querySelector(\"img[src*='{chart}.svg']\").naturalWidth")
        assert loaded > 0, chart
    await shot(page, screens, "fatigue-wide")
    async with page.expect_download() as download_info:
        await page.click("a.csv")
    csv_text = Path(await (await download_info.value).path()).read_text()
    lines = csv_text.splitlines()
    assert lines[0].startswith("kind,who,period,pages,critical,after_hours,escalated")
    assert any(line.startswith("role,icu/nurse,week,") for line in lines)
    assert await eventually(lambda: search(stack, "--actor", stack.user_id("n3002"), "--action", "console.fatigue_export"))
    await page.set_viewport_size(PHONE)
    await shot(page, screens, "fatigue-phone")
    await page.context.close()


async def test_auditor_search_in_the_console_is_recorded_and_exports_csv(stack: RunningStack, browser: Browser, screens: Path):
    page = await signed_in(browser, stack, "a0002")
    await page.goto(f"{stack.url}{BASE}/audit")
    await page.fill("input[name=action]", "console.")
    await page.click("form.search button[type=submit]")
    await page.wait_for_selector("#result-count")
    assert "/audit" in page.url and "console." not in page.url  # the search terms are not in the URL
    rows = await page.locator("table.audit tbody tr").all_inner_texts()
    assert any("console.sign_in" in r for r in rows), rows
    await shot(page, screens, "audit-search-wide")
    await page.select_option("select[name=format]", "csv")
    async with page.expect_download() as download_info:
        await page.click("form.search button[type=submit]")
    download = await download_info.value
    csv_text = Path(await download.path()).read_text()
    assert csv_text.splitlines()[0].startswith("seq,") and "console.sign_in" in csv_text
    recorded = await eventually(lambda: [
        r for r in search(stack, "--actor", stack.user_id("a0002"), "--action", "audit.query")
        if "console." in str(r["details"])
    ] or None)
    assert {r["details"].get("format") for r in recorded} >= {"table", "csv"}
    # A person by name, as an auditor knows them: the rows name them too.
    await page.select_option("select[name=format]", "page")
    await page.fill("input[name=action]", "")
    await page.fill("input[name=actor]", "郑洁")
    await page.click("form.search button[type=submit]")
    await page.wait_for_selector("#result-count")
    assert stack.user_id("a0002") in await page.inner_text("#result-count")
    rows = await page.locator("table.audit tbody tr").all_inner_texts()
    assert rows and all("郑洁" in r and stack.user_id("a0002") in r for r in rows), rows[:3]
    assert not any("None" in r for r in rows), rows[:3]  # an empty field is empty
    await shot(page, screens, "audit-search-by-name")
    await page.fill("input[name=actor]", "王五")
    await page.click("form.search button[type=submit]")
    assert "Nobody on the staff list" in await page.inner_text("p.error")
    # A form posted without the session's CSRF token is refused.
    response = await page.request.post(f"{stack.url}{BASE}/audit", form={"action": "auth."})
    assert response.status == 403 and "console.csrf" in await response.text()
    await page.context.close()


async def _at_least(cards: object, n: int) -> list[str] | None:
    found = await cards()  # type: ignore[operator]
    return found if len(found) >= n else None


async def _none_left(cards: object) -> bool:
    return not await cards()  # type: ignore[operator]
