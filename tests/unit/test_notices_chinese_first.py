"""What the service tells staff about their pages and commands is Chinese first with the
English sentence beside it: every notice the escalation state machine writes (paging, roster
gap, fallback, nobody reachable, escalation ended, acknowledged), the page itself, and the
bot's replies to commands it cannot carry out. The English sentence is kept whole."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from appservice.commands import HELP, USAGE_ACK, USAGE_COVER, USAGE_SWAP, reply_unknown
from carematrix.calls import call_target
from carematrix.oncall.escalation import (
    EscalationPolicy,
    Step,
    on_ack,
    on_deadline,
    open_page,
    page_text,
)
from carematrix.oncall.model import Shift
from carematrix.oncall.roster import Roster
from carematrix.oncall.targets import resolver
from carematrix.policy import load_policy
from tests.paths import DEMO_POLICY_DIR
from tests.unit.test_refusals_chinese_first import chinese_first

ZONE = ZoneInfo("Asia/Shanghai")
ROLE = "cardiology/attending"
NOW = datetime(2026, 11, 25, 3, 0, tzinfo=ZONE)


def policy(fallback: str | None) -> EscalationPolicy:
    return EscalationPolicy(
        (Step("oncall", 300), Step("backup:cardiology/backup", 600, "critical")), fallback, frozenset({"reply"})
    )


def messages(fallback: str | None, holders: dict[str, str]) -> list[str]:
    """Every notice of a page that walks its whole chain unanswered, then is acknowledged."""
    roster = Roster([Shift(role, staff, NOW - timedelta(hours=1), NOW + timedelta(hours=2)) for role, staff in holders.items()])
    resolve = resolver(roster, ROLE, {"fallback": ["F9001"], "empty": []})
    chain = policy(fallback)
    page, actions = open_page("p1", ROLE, "@nurse:x", "!r:x", "$e", NOW, chain, resolve, subject="Bed 3: chest pain")
    out = [a.message for a in actions if a.kind in ("tell_sender", "page")]
    while page.step_deadline is not None:
        page, actions = on_deadline(page, page.step_deadline, chain, resolve)
        out += [a.message for a in actions if a.kind in ("tell_sender", "page")]
    if page.paged:
        _, actions = on_ack(page, page.paged[0], "reply", NOW + timedelta(hours=1), chain)
        out += [a.message for a in actions]
    return out


def test_every_page_notice_opens_in_chinese_and_keeps_its_english_sentence():
    said = (
        messages(None, {ROLE: "D1001", "cardiology/backup": "D1002"})  # paged, escalated, ended, acknowledged
        + messages("pool:fallback", {})  # a roster gap: the fallback is paged
        + messages("pool:empty", {})  # nobody anywhere
        + messages(None, {})
    )
    joined = "\n".join(said)
    for english in ("Paging the on-duty holder for cardiology/attending (step 1): D1001.",
                    "No acknowledgement within 5 min.", "Nobody is on duty for cardiology/attending",
                    "paging the fallback (the fallback pool): F9001.", "Escalation has ended",
                    "Nobody could be reached for cardiology/attending", "acknowledged page [",
                    "Acknowledge this page: reply to it, react to it, or send !ack"):
        assert english in joined, english
    assert [m for m in said if not chinese_first(m)] == []


def test_a_critical_page_is_labelled_in_chinese_first():
    roster = Roster([Shift(ROLE, "D1001", NOW - timedelta(hours=1), NOW + timedelta(hours=1))])
    page, _ = open_page("p2", ROLE, "@bot:x", "!r:x", "$e", NOW, policy(None), resolver(roster, ROLE, {}),
                        priority="critical", subject="危急值 CRITICAL RESULT: 王建国 — K 7.2 mmol/L [HH]")
    text = page_text(page)
    assert text.startswith(f"危急呼叫 CRITICAL PAGE [{page.alert_id}] for cardiology/attending: 危急值 CRITICAL RESULT")
    assert text.count("王建国") == 1  # the subject is said once


def test_bot_replies_open_in_chinese():
    demo = load_policy(DEMO_POLICY_DIR)
    unknown = call_target(demo, "pharmacy/nobody", "hospital.example")
    assert isinstance(unknown, str)
    for reply in (reply_unknown("oncal"), USAGE_ACK, USAGE_COVER, USAGE_SWAP, unknown, HELP):
        assert chinese_first(reply), reply
    assert "Unknown command '!oncal'. Send !help for the list." in reply_unknown("oncal")
    # Each help line still starts with its command, Chinese before English after it.
    for line in HELP.splitlines()[1:]:
        command, _, words = line.partition(" — ")
        assert command.startswith("!") and chinese_first(words), line
