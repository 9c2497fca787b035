"""The console's pure parts: the role × page matrix on the demo policy, the board built from a
roster (gaps, covers, next shift, hospital time zone), the alerts rows, sessions and CSRF,
and the pages rendered with Chinese first and no script."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from carematrix.console.access import (
    ACTIONS,
    PAGES,
    decide_action,
    decide_page,
    sees_alert,
    visible_pages,
)
from carematrix.console.alerts import alert_row
from carematrix.console.board import board
from carematrix.console.fatigue import (
    PageFact,
    as_dicts,
    report,
    shift_of,
    to_csv,
    week_bounds,
    week_of,
)
from carematrix.console.pages import CONTENT_SECURITY_POLICY, local_clock, render
from carematrix.console.sessions import (
    csrf_ok,
    expired,
    from_row,
    needs_touch,
    new_session,
    to_row,
    token_hash,
)
from carematrix.oncall.escalation import Page, plan
from carematrix.oncall.model import Override, Shift
from carematrix.oncall.roster import Roster
from carematrix.policy import load_policy
from tests.paths import DEMO_POLICY_DIR

P = load_policy(DEMO_POLICY_DIR)
ONCALL = P.oncall
assert ONCALL is not None


def person(localpart: str):
    found = P.staff_for_localpart(localpart)
    assert found is not None
    return found


# Who opens what, for each demo login (and the admin account, which has no staff record).
MATRIX = {
    ("d1002", False): {"board"},                      # a doctor
    ("n3001", False): {"board"},                      # a nurse
    ("n3002", False): {"board", "alerts", "fatigue"},  # head nurse (charge_nurse)
    ("d1001", False): {"board", "alerts", "fatigue"},  # chief physician, unit head (charge_nurse)
    ("d2001", False): {"board", "alerts", "fatigue"},  # ICU unit head (charge_nurse)
    ("a0002", False): {"board", "fatigue", "audit"},   # quality officer (auditor)
    ("a0001", False): {"board"},                      # announcer
    (None, True): {"alerts", "system"},               # the server admin account: every unit's alerts
    ("a0001", True): {"board", "alerts", "system"},   # staff who are also server admins
}


@pytest.mark.parametrize(("who", "admin"), list(MATRIX))
def test_each_role_opens_exactly_its_pages(who, admin):
    staff = person(who) if who else None
    allowed = {p.key for p in PAGES if decide_page(p.key, staff, admin).allowed}
    assert allowed == MATRIX[(who, admin)]
    assert {p.key for p in visible_pages(staff, admin)} == allowed


# Who may re-page and hand over a page from the alerts page.
ACTION_MATRIX = {
    ("n3002", False): {"repage", "handover"},  # head nurse (charge_nurse)
    ("d1001", False): {"repage", "handover"},  # unit head (charge_nurse)
    ("n3001", False): set(),                   # a nurse
    ("a0002", False): set(),                   # auditor
    (None, True): set(),                       # the server admin account: runs the server, not the ward
}


@pytest.mark.parametrize(("who", "admin", "sees"), [
    ("n3002", False, {"5A"}),                 # head nurse of ward 5A: her ward's
    ("d1001", False, {"5A", "cardiology"}),   # head of cardiology: cardiology and ward 5A below it
    ("d2001", False, {"ICU"}),                # head of the ICU
    ("a0002", False, set()),                  # hospital administration: none of these units is below it
    (None, True, {"5A", "cardiology", "ICU"}),  # a server admin: every unit's
])
def test_each_charge_nurse_sees_the_alerts_of_their_units_and_an_admin_all(who, admin, sees):
    alerts = {
        "5A": ["cardiology", "cardiology-ward-5a"],  # a critical result in ward 5A pages the cardiology attending
        "cardiology": ["cardiology"],                 # a page to the cardiology attending
        "ICU": ["icu"],
    }
    staff = person(who) if who else None
    assert {k for k, units in alerts.items() if sees_alert(units, staff, admin, P)} == sees


@pytest.mark.parametrize(("who", "admin"), list(ACTION_MATRIX))
def test_each_role_may_do_exactly_its_actions(who, admin):
    staff = person(who) if who else None
    allowed = {a.key for a in ACTIONS if decide_action(a.key, staff).allowed}
    assert allowed == ACTION_MATRIX[(who, admin)]
    refused = decide_action("handover", person("n3001"))
    assert refused.rule == "console.handover_charge_only" and refused.reason.startswith("转交 Hand over")


def test_the_alerts_page_offers_hand_over_only_with_the_right():
    row = {"alert_id": "3F9A1C", "kind": "page", "role_name": "ICU nurse", "priority": "critical", "state": "open",
           "state_words": "未确认 Open", "subject": "x", "patient": None, "opened_at": "2026-12-04T11:00:00+08:00",
           "age_minutes": 3, "step": 1, "steps": 2, "next_step_at": None, "next_target": None, "paged": [],
           "seen_by": [], "acknowledged_by": None}
    common = {"base": "/_carematrix/console", "hospital": "H", "timezone": "Asia/Shanghai", "user": "x", "pages": (),
              "csrf": "tok", "open": [row], "recent": [], "unroutable": [], "recent_hours": 12}
    html = render("alerts.html", **common, may={"repage": True, "handover": True}, staff=[("N3001", "刘洋 Liu Yang")])
    assert 'action="/_carematrix/console/alerts/handover"' in html and 'list="staff-list"' in html
    assert '<option value="N3001">刘洋 Liu Yang</option>' in html and "转交 Hand over" in html
    bare = render("alerts.html", **common, may={"repage": False, "handover": False}, staff=())
    assert "alerts/handover" not in bare and "alerts/repage" not in bare


def test_refusals_name_a_rule_and_say_what_is_needed_chinese_first():
    v = decide_page("audit", person("n3002"), False)
    assert not v.allowed and v.rule == "console.audit_auditor_only"
    assert v.reason.startswith("审计 Audit") and "'auditor'" in v.reason
    assert "'auditor' / 'charge_nurse'" in decide_page("fatigue", person("d1002"), False).reason
    assert decide_page("alerts", person("d1002"), False).rule == "console.alerts_charge_only"
    assert decide_page("system", person("a0002"), False).rule == "console.system_admin_only"
    assert decide_page("board", None, False).rule == "console.board_staff_only"
    assert decide_page("nope", person("a0002"), True).rule == "console.unknown_page"


def _at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, 4, hour, minute, tzinfo=UTC)


def test_board_shows_now_next_gaps_and_covers_in_the_hospital_zone():
    shifts = [
        Shift("icu/nurse", "N3001", _at(0), _at(8)),          # 08:00-16:00 Shanghai
        Shift("icu/nurse", "N3001", _at(12), _at(20)),        # gap 16:00-20:00 Shanghai
        Shift("icu/doctor", "D2001", _at(0), _at(12)),
        Shift("icu/doctor", "D1001", _at(12), _at(23)),
    ]
    cover = Override("icu/doctor", "D1002", _at(2), _at(4), "D2001", "N3002", "cover")
    roster = Roster(shifts, [cover])

    def name(s: str) -> str:
        return {"N3001": "刘洋 Liu Yang (N3001)", "D2001": "陈静 Chen Jing (D2001)", "D1002": "王芳 Wang Fang (D1002)",
                "D1001": "李伟 Li Wei (D1001)", "N3002": "赵敏 Zhao Min (N3002)"}.get(s, s)

    data = board(ONCALL, P.units, roster, [cover], _at(3), name)
    assert data["timezone"] == "Asia/Shanghai" and data["now"].startswith("2026-12-04T11:00:00+08:00")
    rows = {r["role"]: r for r in data["roles"]}
    nurse, doctor = rows["icu/nurse"], rows["icu/doctor"]
    assert nurse["now"] == ["刘洋 Liu Yang (N3001)"] and not nurse["gap_now"]
    assert nurse["until"] == "2026-12-04T16:00:00+08:00" and nurse["next"] == []  # the next segment is a gap
    assert nurse["gaps"][0] == {"from": "2026-12-04T16:00:00+08:00", "until": "2026-12-04T20:00:00+08:00"}
    assert doctor["now"] == ["王芳 Wang Fang (D1002)"]  # the cover replaces the rostered doctor
    assert doctor["covers"][0]["replaces"] == "陈静 Chen Jing (D2001)" and doctor["covers"][0]["by"] == "赵敏 Zhao Min (N3002)"
    assert doctor["until"] == "2026-12-04T12:00:00+08:00" and doctor["next"] == ["陈静 Chen Jing (D2001)"]
    # A role nobody holds is a gap now, and the whole coming day is highlighted.
    duty = rows["administration/duty-doctor"]
    assert duty["gap_now"] and duty["now"] == [] and duty["next"] is None and len(duty["gaps"]) == 1
    assert rows["icu/nurse"]["unit_name"] == P.units["icu"].name


def test_alert_row_counts_age_and_names_the_next_step():
    role = ONCALL.roles["icu/nurse"]
    page = Page("p1", "icu/nurse", "@carematrix:x", "!r:x", "$e", _at(3), 0, _at(3, 2), ("N3001",), None, None,
                "open", "critical", "Potassium 6.8", None, role.name)
    row = alert_row(page, {"facility": "LIS", "control_id": "C1", "patient_id": "P1", "name": "李秀英", "ward": "ICU", "bed": "03"},
                    [("N3001", _at(3, 1))], role.escalation, _at(3, 7), "Asia/Shanghai", lambda s: f"<{s}>",
                    {r.id: r.name for r in ONCALL.roles.values()})
    assert row["kind"] == "critical_result" and row["age_minutes"] == 7 and row["step"] == 1 and row["steps"] == 2
    assert row["next_step_at"] == "2026-12-04T11:02:00+08:00" and row["next_target"] == ONCALL.roles["icu/doctor"].name
    assert row["waiting_on"] == "当班者 whoever is on duty"
    handed = alert_row(replace(page, lead="staff:D2001"), None, [], plan(role.escalation, "staff:D2001", 300), _at(3, 7),
                       "Asia/Shanghai", lambda s: f"<{s}>")
    assert handed["waiting_on"] == "<D2001>" and handed["steps"] == 3  # a hand-over: the chain runs from them
    assert row["seen_by"] == [{"by": "<N3001>", "at": "2026-12-04T11:01:00+08:00"}]
    assert row["patient"]["name"] == "李秀英" and row["state_words"].startswith("未确认")


def test_sessions_expire_when_idle_or_old_and_check_csrf():
    cookie, s = new_session("@n3002:x", _at(1))
    assert s.token_hash == token_hash(cookie) and cookie not in s.token_hash and len(s.token_hash) == 64
    assert from_row(to_row(s)) == s  # what the database holds is the session
    assert not expired(s, _at(1, 29)) and expired(s, _at(2, 0))  # idle for 31 minutes
    used = replace(s, last_used=_at(12, 50))
    assert not expired(used, _at(12, 59)) and expired(used, _at(13, 0))  # 12 hours since sign-in
    assert not needs_touch(s, _at(1, 0) + timedelta(seconds=59)) and needs_touch(s, _at(1, 1))
    assert csrf_ok(s, s.csrf) and not csrf_ok(s, None) and not csrf_ok(s, s.csrf[:-1] + "x")
    other_cookie, other = new_session("@n3002:x", _at(1))
    assert other_cookie != cookie and other.token_hash != s.token_hash and other.csrf != s.csrf


def test_pages_render_chinese_first_escape_input_and_carry_no_script():
    html = render("refused.html", base="/_carematrix/console", hospital="仁和医院", timezone="Asia/Shanghai",
                  user="<b>x</b>", pages=(), csrf="t", reason="审计 Audit: <script>", rule="console.audit_auditor_only")
    assert "<script" not in html and "&lt;script&gt;" in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "无权访问 Not allowed" in html and "console.audit_auditor_only" in html
    assert "script-src" not in CONTENT_SECURITY_POLICY and "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert local_clock("2026-12-04T03:05:00+00:00", "Asia/Shanghai") == "11:05"


# -- alarm-fatigue report, against a seeded week (2026-W49: Mon 30 Nov - Sun 6 Dec) ----------

SH = ZoneInfo("Asia/Shanghai")


def _local(day: int, hour: int, minute: int = 0) -> datetime:
    month = 11 if day >= 30 else 12
    return datetime(2026, month, day, hour, minute, tzinfo=SH)


SEEDED = [
    # Monday 10:00, office hours: the nurse acknowledges in 30 s.
    PageFact("icu/nurse", _local(30, 10), "critical", ("N3001",), 0, "N3001", _local(30, 10) + timedelta(seconds=30)),
    # Monday 21:00 (night): escalated to the doctor, who acknowledges after 200 s.
    PageFact("icu/nurse", _local(30, 21), "critical", ("N3001", "D2001"), 1, "D2001", _local(30, 21) + timedelta(seconds=200)),
    # Tuesday 03:00 — Monday's night shift; never acknowledged.
    PageFact("icu/nurse", _local(1, 3), "urgent", ("N3001",), 0),
    # Saturday 11:00: a weekend day shift is after hours; acknowledged after 1,000 s.
    PageFact("icu/doctor", _local(5, 11), "critical", ("D2001",), 0, "D2001", _local(5, 11) + timedelta(seconds=1000)),
    # Wednesday 17:30, office hours: escalated to the backup, who acknowledges after 400 s.
    PageFact("cardiology/attending", _local(2, 17, 30), "urgent", ("D1001", "D1002"), 1, "D1002", _local(2, 17, 30) + timedelta(seconds=400)),
]


def _rows() -> dict[tuple[str, str, str], dict]:
    return {(d["kind"], d["who"], d["period"]): d for d in as_dicts(report(SEEDED, SH))}


def test_fatigue_report_counts_each_role_for_the_week_and_each_shift():
    rows = _rows()
    nurse = rows[("role", "icu/nurse", "week")]
    assert (nurse["pages"], nurse["critical"], nurse["after_hours"], nurse["escalated"]) == (3, 2, 2, 1)
    assert nurse["escalation_rate"] == 0.333 and nurse["acknowledged"] == 2
    assert (nurse["tta_median_s"], nurse["tta_p90_s"]) == (115, 200)
    assert (nurse["tta <1 min"], nurse["tta 1-5 min"], nurse["tta 5-15 min"], nurse["tta >15 min"]) == (1, 1, 0, 0)
    assert rows[("role", "icu/nurse", "2026-11-30 day")]["pages"] == 1
    assert rows[("role", "icu/nurse", "2026-11-30 night")]["pages"] == 2  # 21:00 and 03:00
    doctor = rows[("role", "icu/doctor", "2026-12-05 day")]
    assert doctor["after_hours"] == 1 and doctor["tta >15 min"] == 1
    cardiology = rows[("role", "cardiology/attending", "week")]
    assert (cardiology["pages"], cardiology["critical"], cardiology["after_hours"], cardiology["escalation_rate"]) == (1, 0, 0, 1.0)


def test_fatigue_report_counts_every_person_a_page_interrupted():
    rows = _rows()
    liu = rows[("person", "N3001", "week")]
    assert (liu["pages"], liu["critical"], liu["after_hours"], liu["escalated"]) == (3, 2, 2, 1)
    assert liu["acknowledged"] == 1 and liu["tta_median_s"] == 30  # only what she acknowledged herself
    chen = rows[("person", "D2001", "week")]
    assert (chen["pages"], chen["critical"], chen["after_hours"]) == (2, 2, 2)
    assert (chen["tta_median_s"], chen["tta 1-5 min"], chen["tta >15 min"]) == (600, 1, 1)
    assert rows[("person", "D1001", "week")]["acknowledged"] == 0
    assert rows[("person", "D1002", "week")]["tta 5-15 min"] == 1
    # Roles first, then people; each one's week before its shifts.
    ordered = [(r.kind, r.who, r.period) for r in report(SEEDED, SH)]
    assert ordered[0] == ("role", "cardiology/attending", "week") and ordered[-1][0] == "person"


def test_fatigue_week_bounds_shifts_and_csv():
    start, end = week_bounds("2026-W49", SH)
    assert start == _local(30, 0) and end == _local(7, 0) and week_of(_local(6, 23, 59), SH) == "2026-W49"
    assert shift_of(_local(1, 7, 59), SH) == "2026-11-30 night" and shift_of(_local(1, 8), SH) == "2026-12-01 day"
    text = to_csv(report(SEEDED, SH))
    lines = text.splitlines()
    assert lines[0].split(",")[:4] == ["kind", "who", "period", "pages"]
    assert "role,icu/nurse,week,3,2,2,1,0.333,2,115,200,1,1,0,0" in lines


def test_fatigue_page_and_charts_render():
    rows = as_dicts(report(SEEDED, SH))
    for d in rows:
        d["name"] = d["who"]
    html = render("fatigue.html", base="/_carematrix/console", hospital="仁和医院", timezone="Asia/Shanghai",
                  user="x", pages=(), page_count=5, csrf="t", week="2026-W49", this_week="2026-W49", prev_week="2026-W48",
                  next_week="2026-W50", rows=rows)
    assert 'tr data-who="icu/nurse" data-period="week"' in html and "33% (1)" in html
    assert "2026-11-30 夜班 night" in html and "<script" not in html
    from carematrix.console.charts import pages_per_shift, time_to_acknowledge

    for svg in (pages_per_shift(report(SEEDED, SH)), time_to_acknowledge(report(SEEDED, SH))):
        assert svg.startswith(b"<?xml") and b"<svg" in svg
    assert "每班呼叫".encode() in pages_per_shift(report(SEEDED, SH))


def test_the_system_page_names_each_rejected_edit_by_file_and_line_and_shows_the_org_diff():
    html = render(
        "system.html", base="/_carematrix/console", hospital="H", timezone="Asia/Shanghai", user="admin", pages=(),
        csrf="t", policy={"digest": "abc123", "dir": "/p", "loaded_at": "2026-12-04T10:00:00+08:00",
                          "appservice_digest": "abc123"},
        reload={"accepted": False, "at": "2026-12-04T10:05:00+08:00", "errors": [
            {"file": "/p/rooms.yaml", "line": 5, "message": "unknown role '<everyone>'", "text": ""}]},
        appservice_rejected=[], org={"actions": ["+ @l4001 joins #laboratory-team"], "errors": [], "digest": "abc123"},
        services=[{"name": "影像 PACS (DICOMweb)", "ok": False, "detail": "http://pacs: HTTP 503"},
                  {"name": "TURN 通话中继 call relay", "ok": None, "detail": "off"}],
    )
    assert "修改被拒绝，仍使用上一版 The edit was rejected" in html
    assert '<code class="where">/p/rooms.yaml:5</code>' in html and "&lt;everyone&gt;" in html
    assert "+ @l4001 joins #laboratory-team" in html and "故障 DOWN" in html and "未启用 off" in html
    assert "10:05" in html and "<script" not in html
    calm = render(
        "system.html", base="/b", hospital="H", timezone="UTC", user="admin", pages=(), csrf="t",
        policy={"digest": "d", "dir": "/p", "loaded_at": "2026-12-04T10:00:00+00:00", "appservice_digest": "e"},
        reload=None, appservice_rejected=[], org={"actions": [], "errors": [], "digest": "d"}, services=[],
    )
    assert "无需更改，与策略一致 Nothing to change" in calm and "应用服务使用的策略不同 The appservice enforces another policy" in calm


# -- sign-in through the hospital SSO ------------------------------------------------------

def test_sign_in_options_follow_the_homeserver_login_flows():
    from carematrix.console.sso import IdentityProvider, sign_in_options

    both = sign_in_options({"flows": [
        {"type": "m.login.sso", "identity_providers": [{"id": "oidc-hospital", "name": "仁和统一认证"}]},
        {"type": "m.login.token"}, {"type": "m.login.password"}]})
    assert both.password and both.sso == (IdentityProvider("oidc-hospital", "仁和统一认证"),)
    sso_only = sign_in_options({"flows": [{"type": "m.login.sso"}, {"type": "m.login.token"}]})
    assert not sso_only.password and sso_only.sso == (IdentityProvider(None, ""),)  # one SSO, no IdP list
    assert sign_in_options({"flows": [{"type": "m.login.password"}]}).sso == ()
    assert sign_in_options("garbage") == sign_in_options({"flows": "x"}) == sign_in_options({})


def test_sso_urls_and_state_check():
    from carematrix.console.sso import callback_url, redirect_url, state_ok

    callback = callback_url("https://hs.renhe.example/", "/_carematrix/console", "abc-_1")
    assert callback == "https://hs.renhe.example/_carematrix/console/login/sso/callback?state=abc-_1"
    assert redirect_url("https://hs.renhe.example/", "oidc-hospital", callback) == (
        "https://hs.renhe.example/_matrix/client/v3/login/sso/redirect/oidc-hospital?redirectUrl="
        "https%3A%2F%2Fhs.renhe.example%2F_carematrix%2Fconsole%2Flogin%2Fsso%2Fcallback%3Fstate%3Dabc-_1")
    assert redirect_url("https://hs.x/", None, "c").startswith("https://hs.x/_matrix/client/v3/login/sso/redirect?")
    assert state_ok("s1", "s1") and not state_ok("s1", "s2") and not state_ok(None, "s1") and not state_ok("", "")
    assert not state_ok("s1", None)


def _login_page(**values):
    return render("login.html", base="/_carematrix/console", hospital="仁和医院", timezone="Asia/Shanghai",
                  user=None, pages=(), csrf="t", **values)


def test_sign_in_page_shows_the_sso_button_beside_or_instead_of_the_password_form():
    sso = [{"name": "仁和统一认证", "href": "https://hs.x/_carematrix/console/login/sso?idp=oidc-hospital"}]
    beside = _login_page(sso=sso, password=True)
    assert "使用医院统一身份认证登录 Sign in with hospital SSO" in beside and "仁和统一认证" in beside
    assert 'href="https://hs.x/_carematrix/console/login/sso?idp=oidc-hospital"' in beside
    assert 'name="password"' in beside and "或 or" in beside
    assert beside.index("Sign in with hospital SSO") < beside.index('name="password"')  # Chinese first, SSO first
    instead = _login_page(sso=sso, password=False)
    assert "Sign in with hospital SSO" in instead and 'name="password"' not in instead
    plain = _login_page(sso=[], password=True)
    assert "hospital SSO" not in plain and 'name="password"' in plain and "或 or" not in plain
    assert "<script" not in beside
