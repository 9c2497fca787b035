"""A page to "Cardiology – attending on duty" and its escalation, as the nurse who sent it and
the doctors who get it would check it."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from carematrix.oncall.escalation import (
    Action,
    EscalationPolicy,
    Page,
    Step,
    due,
    hand_over,
    on_ack,
    on_deadline,
    open_page,
    page_text,
    plan,
    roster_gaps,
)
from carematrix.oncall.model import Shift
from carematrix.oncall.roster import Roster
from carematrix.oncall.targets import describe, parse_target, resolver

BERLIN = ZoneInfo("Europe/Berlin")
ROLE = "cardiology/attending"
BACKUP = "cardiology/attending-backup"


def at(hour: int, minute: int = 0, day: int = 25) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=BERLIN)


NIGHT = at(3)

ROSTER = Roster(
    [
        Shift(ROLE, "N2001", at(20, day=24), at(8)),
        Shift(BACKUP, "B4001", at(20, day=24), at(8)),
        # a roster gap for the attending from 08:00 to 09:00
        Shift(ROLE, "D1001", at(9), at(20)),
    ]
)
POOLS = {"cardiology-fallback": ["F9001", "F9002"], "empty": []}
POLICY = EscalationPolicy(
    steps=(Step("oncall", 300), Step(f"backup:{BACKUP}", 600, "critical")),
    fallback="pool:cardiology-fallback",
    ack_by=frozenset({"reply", "reaction"}),
)
RESOLVE = resolver(ROSTER, ROLE, POOLS)


def kinds(actions: list[Action]) -> list[str]:
    return [a.kind for a in actions]


def paged(actions: list[Action]) -> list[tuple[str, ...]]:
    return [a.staff for a in actions if a.kind == "page"]


def told(actions: list[Action]) -> str:
    return " | ".join(a.message for a in actions if a.kind == "tell_sender")


def open_at(now: datetime, policy: EscalationPolicy = POLICY) -> tuple[Page, list[Action]]:
    return open_page(
        "p1", ROLE, "@nurse:renhe.example", "!ward:renhe.example", "$ev", now, policy, RESOLVE
    )


def test_a_page_at_0300_reaches_the_night_doctor_and_the_sender_is_told_who():
    page, actions = open_at(NIGHT)
    assert paged(actions) == [("N2001",)]
    assert page.state == "open" and page.step == 0 and page.paged == ("N2001",)
    assert page.step_deadline == NIGHT + timedelta(minutes=5)
    assert "N2001" in told(actions)
    assert next(a for a in actions if a.kind == "page").priority == "urgent"


def test_unanswered_page_escalates_through_two_steps_and_stops_when_the_second_acks_by_reaction():
    page, _ = open_at(NIGHT)
    page, actions = on_deadline(page, NIGHT + timedelta(minutes=5), POLICY, RESOLVE)
    assert paged(actions) == [("B4001",)]
    assert next(a for a in actions if a.kind == "page").priority == "critical"
    assert "No acknowledgement within 5 min" in told(actions)
    assert page.step == 1 and page.paged == ("N2001", "B4001")
    assert page.step_deadline == NIGHT + timedelta(minutes=15)

    ack_time = NIGHT + timedelta(minutes=7)
    page, actions = on_ack(page, "B4001", "reaction", ack_time, POLICY)
    assert page.state == "acked" and page.acked_by == "B4001" and page.acked_at == ack_time
    assert page.step_deadline is None
    assert kinds(actions) == ["acked"]  # one notice: the sender and the others paged
    assert actions[0].staff == ("N2001",)  # the others may have their alert cleared
    assert "B4001 acknowledged page [" in actions[0].message
    # nothing more happens to an acknowledged page
    assert on_deadline(page, NIGHT + timedelta(hours=1), POLICY, RESOLVE) == (page, [])
    assert on_ack(page, "N2001", "reply", NIGHT + timedelta(minutes=8), POLICY) == (page, [])
    assert due([page], NIGHT + timedelta(hours=1)) == []


def test_ack_by_someone_not_paged_or_by_a_disallowed_method_is_ignored():
    page, _ = open_at(NIGHT)
    later = NIGHT + timedelta(minutes=1)
    assert on_ack(page, "B4001", "reply", later, POLICY) == (page, [])  # not paged (yet)
    assert on_ack(page, "X0000", "reaction", later, POLICY) == (page, [])  # a bystander
    assert on_ack(page, "N2001", "read", later, POLICY) == (page, [])  # read is not allowed here
    assert on_ack(page, "N2001", "typing", later, POLICY) == (page, [])
    acked, actions = on_ack(page, "N2001", "reply", later, POLICY)
    assert acked.state == "acked" and kinds(actions) == ["acked"]


def test_roster_gap_tells_the_sender_loudly_and_pages_the_fallback_at_once():
    gap = at(8, 30)
    page, actions = open_at(gap)
    assert paged(actions) == [("F9001", "F9002")]
    tell = next(a for a in actions if a.kind == "tell_sender")
    assert tell.priority == "critical"
    assert "Nobody is on duty for cardiology/attending" in tell.message
    assert "fallback" in tell.message
    assert "gap" in kinds(actions)
    assert page.paged == ("F9001", "F9002") and page.state == "open"
    assert page.step_deadline == gap + timedelta(minutes=5)
    # the fallback can acknowledge
    acked, _ = on_ack(page, "F9002", "reply", gap + timedelta(minutes=1), POLICY)
    assert acked.acked_by == "F9002"


def test_gap_with_an_empty_fallback_tells_the_sender_and_tries_the_next_step_at_once():
    policy = EscalationPolicy(POLICY.steps, "pool:empty", POLICY.ack_by)
    day_backup = Shift(BACKUP, "B4002", at(8), at(20))
    resolve = resolver(Roster([day_backup]), ROLE, POOLS)  # attending rota empty, backup there
    page, actions = open_page("p2", ROLE, "N1", "!r", "$e", at(8, 30), policy, resolve)
    assert "nobody could be reached at this step" in told(actions)
    assert "Trying step 2" in told(actions)
    assert paged(actions) == [("B4002",)]
    assert page.step == 1 and page.step_deadline == at(8, 30) + timedelta(minutes=10)


def test_the_roster_gaps_a_page_met_name_whom_the_fallback_paged():
    _, on_duty = open_at(NIGHT)
    assert roster_gaps(on_duty) == []
    _, gap = open_at(at(8, 30))
    assert [(g.step, g.fallback_paged) for g in roster_gaps(gap)] == [(0, ("F9001", "F9002"))]
    # An empty fallback pages nobody at that step; the next step's page is not the fallback's.
    policy = EscalationPolicy(POLICY.steps, "pool:empty", POLICY.ack_by)
    resolve = resolver(Roster([Shift(BACKUP, "B4002", at(8), at(20))]), ROLE, POOLS)
    _, empty = open_page("p2", ROLE, "N1", "!r", "$e", at(8, 30), policy, resolve)
    assert [(g.step, g.fallback_paged) for g in roster_gaps(empty)] == [(0, ())]


def test_nobody_anywhere_is_never_silent():
    policy = EscalationPolicy(POLICY.steps, None, POLICY.ack_by)
    page, actions = open_page("p3", ROLE, "N1", "!r", "$e", NIGHT, policy, lambda target, at: ())
    assert page.state == "exhausted" and page.step_deadline is None
    assert paged(actions) == []
    assert "Nobody could be reached for cardiology/attending" in told(actions)
    assert all(a.priority == "critical" for a in actions if a.kind == "tell_sender")
    assert kinds(actions).count("gap") == 2


def test_exhausted_chain_tells_the_sender():
    page, _ = open_at(NIGHT)
    page, _ = on_deadline(page, NIGHT + timedelta(minutes=5), POLICY, RESOLVE)
    page, actions = on_deadline(page, NIGHT + timedelta(minutes=15), POLICY, RESOLVE)
    assert page.state == "exhausted" and page.step_deadline is None
    assert paged(actions) == []
    assert "No acknowledgement for cardiology/attending" in told(actions)
    assert "N2001, B4001" in told(actions)
    assert on_deadline(page, NIGHT + timedelta(minutes=30), POLICY, RESOLVE) == (page, [])
    # a late acknowledgement is still news the sender wants
    acked, actions = on_ack(page, "N2001", "reply", NIGHT + timedelta(minutes=20), POLICY)
    assert acked.state == "acked" and "after escalation had ended" in actions[0].message


def test_calling_on_deadline_twice_pages_once():
    page, _ = open_at(NIGHT)
    fire = NIGHT + timedelta(minutes=5)
    once, actions = on_deadline(page, fire, POLICY, RESOLVE)
    twice, again = on_deadline(once, fire, POLICY, RESOLVE)
    assert paged(actions) == [("B4001",)]
    assert again == [] and twice == once
    # and before the deadline nothing happens
    assert on_deadline(page, fire - timedelta(seconds=1), POLICY, RESOLVE) == (page, [])


def test_resuming_late_gives_the_next_person_their_full_timeout():
    page, _ = open_at(NIGHT)
    back_up = NIGHT + timedelta(minutes=25)  # appservice was down for 20 minutes
    assert due([page], back_up) == [page]
    page, actions = on_deadline(page, back_up, POLICY, RESOLVE)
    assert paged(actions) == [("B4001",)]
    assert page.step_deadline == back_up + timedelta(minutes=10)


def test_escalation_to_a_step_in_a_roster_gap_pages_the_fallback():
    policy = EscalationPolicy(
        (Step("oncall", 300), Step("role:neurology/attending", 300)), POLICY.fallback, POLICY.ack_by
    )
    page, _ = open_at(NIGHT, policy)
    page, actions = on_deadline(page, NIGHT + timedelta(minutes=5), policy, RESOLVE)
    assert paged(actions) == [("F9001", "F9002")]
    assert "Nobody is reachable as on-duty neurology/attending" in told(actions)
    assert page.step == 1 and page.paged == ("N2001", "F9001", "F9002")


def test_due_lists_only_open_overdue_pages_most_overdue_first():
    first, _ = open_at(NIGHT)
    second, _ = open_at(NIGHT + timedelta(minutes=2))
    acked, _ = on_ack(first, "N2001", "reply", NIGHT, POLICY)
    assert due([second, first, acked], NIGHT + timedelta(minutes=8)) == [first, second]
    assert due([second, first], NIGHT + timedelta(minutes=6)) == [first]
    assert due([first], NIGHT) == []


def test_policies_and_steps_are_checked_when_loaded():
    with pytest.raises(ValueError):
        Step("pager:123", 300)
    with pytest.raises(ValueError):
        Step("oncall", 0)
    with pytest.raises(ValueError):
        Step("oncall", 300, "asap")
    with pytest.raises(ValueError):
        EscalationPolicy((), None, frozenset({"reply"}))
    with pytest.raises(ValueError):
        EscalationPolicy((Step("oncall", 60),), None, frozenset({"telepathy"}))
    with pytest.raises(ValueError):
        EscalationPolicy((Step("oncall", 60),), "pool:", frozenset({"reply"}))
    with pytest.raises(ValueError):
        open_at(datetime(2026, 11, 25, 3, 0))


def test_targets():
    assert parse_target("oncall") == ("oncall", "")
    assert parse_target("staff:D1001") == ("staff", "D1001")
    assert describe(f"backup:{BACKUP}") == f"backup {BACKUP}"
    assert RESOLVE("staff:D1001", NIGHT) == ("D1001",)
    assert RESOLVE(f"role:{BACKUP}", NIGHT) == ("B4001",)
    assert RESOLVE("pool:unknown", NIGHT) == ()


READ_TOO = EscalationPolicy(POLICY.steps, POLICY.fallback, frozenset({"reply", "reaction", "read"}))


def test_reading_a_critical_page_marks_nothing_acknowledged_but_reading_a_routine_one_may():
    critical, _ = open_page("c", ROLE, "@lis:x", "!ward:x", "$ev", NIGHT, READ_TOO, RESOLVE, priority="critical")
    assert on_ack(critical, "N2001", "read", NIGHT + timedelta(minutes=1), READ_TOO) == (critical, [])
    acked, _ = on_ack(critical, "N2001", "reaction", NIGHT + timedelta(minutes=1), READ_TOO)
    assert acked.state == "acked"
    routine, _ = open_page("r", ROLE, "@nurse:x", "!ward:x", "$ev", NIGHT, READ_TOO, RESOLVE, priority="routine")
    acked, _ = on_ack(routine, "N2001", "read", NIGHT + timedelta(minutes=1), READ_TOO)
    assert acked.state == "acked"


def test_ack_command_names_the_page_so_it_acknowledges_even_where_reactions_are_not_allowed():
    policy = EscalationPolicy(POLICY.steps, POLICY.fallback, frozenset({"reply"}))
    page, _ = open_page("p", ROLE, "@nurse:x", "!ward:x", "$ev", NIGHT, policy, RESOLVE)
    assert on_ack(page, "N2001", "reaction", NIGHT, policy) == (page, [])
    assert on_ack(page, "N2001", "command", NIGHT, policy)[0].state == "acked"


def test_two_pages_to_one_nurse_name_their_patients_and_carry_different_alert_ids():
    first, a1 = open_page("hl7-LIS-1-nurse", ROLE, "@bot:x", "!icu:x", "$1", NIGHT, POLICY, RESOLVE,
                          priority="critical", subject="CRITICAL RESULT: 王建国 (P1, ICU bed 3) — K 7.2 mmol/L [HH]")
    second, a2 = open_page("hl7-LIS-2-nurse", ROLE, "@bot:x", "!icu:x", "$2", NIGHT, POLICY, RESOLVE,
                           priority="critical", subject="CRITICAL RESULT: 李秀英 (P2, ICU bed 5) — K 2.1 mmol/L [LL]")
    assert first.alert_id != second.alert_id
    text1 = next(a.message for a in a1 if a.kind == "page")
    text2 = next(a.message for a in a2 if a.kind == "page")
    assert "王建国" in text1 and "7.2" in text1 and f"!ack {first.alert_id}" in text1
    assert "李秀英" in text2 and "王建国" not in text2 and f"[{second.alert_id}]" in text2
    assert next(a for a in a1 if a.kind == "page").priority == "critical"  # at least the alert's priority
    assert page_text(first).startswith(f"危急呼叫 CRITICAL PAGE [{first.alert_id}]")
    assert "确认此呼叫" in page_text(first) and "Acknowledge this page" in page_text(first)


def test_a_lead_is_paged_before_the_role_and_the_role_follows_when_the_lead_does_not_answer():
    chain = plan(POLICY, "staff:D9001", 120)
    page, actions = open_page("o", ROLE, "@bot:x", "!alert:x", "$e", NIGHT, chain, RESOLVE, lead="staff:D9001")
    assert paged(actions) == [("D9001",)] and page.step_deadline == NIGHT + timedelta(minutes=2)
    page, actions = on_deadline(page, NIGHT + timedelta(minutes=2), chain, RESOLVE)
    assert paged(actions) == [("N2001",)] and page.paged == ("D9001", "N2001")


def test_times_people_read_are_in_the_zone_they_are_given():
    shanghai = ZoneInfo("Asia/Shanghai")
    page, _ = open_at(NIGHT)
    _, actions = on_ack(page, "N2001", "reply", NIGHT.astimezone(shanghai), POLICY)
    assert "10:00 CST" in actions[0].message  # 03:00 in Berlin is 10:00 in Shanghai


def test_a_page_on_the_night_clocks_go_forward_reaches_the_right_holder_and_escalates_after_real_minutes():
    """A roster in Europe/Berlin (iCalendar, as the hospital exports it) across 28 Mar 2027,
    02:00 CET -> 03:00 CEST: the night shift 20:00-08:00 is 11 real hours, the day holder takes
    over at 08:00 on the wall clock, and a 5-minute step paged at 01:58 fires at 03:03."""
    from bridges.roster import FeedConfig, parse_feed

    ics = (
        b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n"
        b"BEGIN:VEVENT\r\nUID:night@x\r\nDTSTAMP:20270301T000000Z\r\n"
        b"DTSTART;TZID=Europe/Berlin:20270327T200000\r\nDTEND;TZID=Europe/Berlin:20270328T080000\r\n"
        b"SUMMARY:Attending\r\nX-STAFF-NUMBER:N2001\r\nEND:VEVENT\r\n"
        b"BEGIN:VEVENT\r\nUID:day@x\r\nDTSTAMP:20270301T000000Z\r\n"
        b"DTSTART;TZID=Europe/Berlin:20270328T080000\r\nDTEND;TZID=Europe/Berlin:20270328T200000\r\n"
        b"SUMMARY:Attending\r\nX-STAFF-NUMBER:D1001\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    config = FeedConfig(timezone="Europe/Berlin", roles={"Attending": ROLE},
                        known_staff=frozenset({"N2001", "D1001", "B4001"}), known_roles=frozenset({ROLE}))
    night = datetime(2027, 3, 28, 1, 58, tzinfo=BERLIN)
    shifts = parse_feed("ical", ics, "roster.ics", config, (night - timedelta(days=2), night + timedelta(days=2)))
    (n, d) = sorted(shifts, key=lambda s: s.start)
    assert n.end - n.start == timedelta(hours=11)  # one hour of the night never happened
    roster = Roster(shifts)
    resolve = resolver(roster, ROLE, POOLS)
    page, actions = open_page("dst", ROLE, "@nurse:x", "!r:x", "$e", night, POLICY, resolve)
    assert paged(actions) == [("N2001",)]
    assert page.step_deadline is not None
    assert page.step_deadline.astimezone(BERLIN).strftime("%H:%M %Z") == "03:03 CEST"
    assert on_deadline(page, datetime(2027, 3, 28, 3, 2, tzinfo=BERLIN), POLICY, resolve) == (page, [])
    # And when clocks go back (25 Oct 2026, 03:00 CEST -> 02:00 CET): 5 real minutes, not 65.
    autumn = datetime(2026, 10, 25, 2, 58, tzinfo=BERLIN)  # the first 02:58 (CEST)
    late_roster = Roster([Shift(ROLE, "N2001", autumn - timedelta(hours=6), autumn + timedelta(hours=6))])
    page, _ = open_page("dst2", ROLE, "@nurse:x", "!r:x", "$e", autumn, POLICY, resolver(late_roster, ROLE, POOLS))
    assert page.step_deadline is not None and page.step_deadline - autumn == timedelta(minutes=5)
    assert page.step_deadline.astimezone(BERLIN).strftime("%H:%M %Z") == "02:03 CET"
    assert roster.on_duty(ROLE, datetime(2027, 3, 28, 7, 59, tzinfo=BERLIN)) == ("N2001",)
    assert roster.on_duty(ROLE, datetime(2027, 3, 28, 8, 1, tzinfo=BERLIN)) == ("D1001",)


def test_a_page_handed_over_pages_the_new_person_escalates_from_them_and_their_ack_closes_it():
    page, _ = open_at(NIGHT)  # pages the night doctor N2001
    page, _ = on_deadline(page, NIGHT + timedelta(minutes=5), POLICY, RESOLVE)  # and then the backup
    assert page.step == 1 and page.paged == ("N2001", "B4001")
    now = NIGHT + timedelta(minutes=7)
    handed, actions = hand_over(page, "D1001", "N3002", now, 300)
    assert kinds(actions) == ["page", "handed_over"] and paged(actions) == [("D1001",)]
    text = actions[0].message
    assert text.startswith("呼叫 Page [") and "转交给您 handed over to you" in text and "N3002" in text
    assert actions[0].priority == page.priority
    tell = actions[1]
    assert tell.staff == ("N2001", "B4001") and "D1001 接手 takes over" in tell.message and "handed over by N3002" in tell.message
    # Escalation runs from the new person: they lead, with their own deadline ...
    assert handed.lead == "staff:D1001" and handed.step == 0 and handed.step_deadline == now + timedelta(minutes=5)
    chain = plan(POLICY, handed.lead, 300)
    assert [s.target for s in chain.steps] == ["staff:D1001", "oncall", f"backup:{BACKUP}"]
    # ... and without an acknowledgement the role's chain runs again after them.
    later, more = on_deadline(handed, now + timedelta(minutes=5), chain, RESOLVE)
    assert later.step == 1 and paged(more) == [("N2001",)]
    # Their acknowledgement closes it.
    acked, _ = on_ack(handed, "D1001", "reaction", now + timedelta(minutes=1), chain)
    assert acked.state == "acked" and acked.acked_by == "D1001"


def test_only_an_open_page_is_handed_over():
    page, _ = open_at(NIGHT)
    acked, _ = on_ack(page, "N2001", "reply", NIGHT + timedelta(minutes=1), POLICY)
    assert hand_over(acked, "D1001", "N3002", NIGHT + timedelta(minutes=2), 300) == (acked, [])
