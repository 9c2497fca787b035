"""Roster feeds: what an admin sees after a refresh (who holds which role, from when to when)
and, for a broken feed, every problem with the file:line or resource to fix."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bridges.roster import FeedConfig, FeedInvalid, parse_feed
from carematrix.oncall.model import Shift

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
WEEK_10 = (datetime(2025, 3, 3, tzinfo=SHANGHAI), datetime(2025, 3, 10, tzinfo=SHANGHAI))
YEAR_2025 = (datetime(2025, 1, 1, tzinfo=BERLIN), datetime(2026, 1, 1, tzinfo=BERLIN))

RENJI = FeedConfig(
    timezone="Asia/Shanghai",
    roles={
        "心内科主治医师 Cardiology Attending": "cardiology/attending",
        "心内科住院医师 Cardiology Resident": "cardiology/resident",
        "心内科主治医师": "cardiology/attending",
        "心内科住院医师": "cardiology/resident",
        "CARD-ATT": "cardiology/attending",
        "CARD-RES": "cardiology/resident",
        "Cardiology Fellow (legacy)": "cardiology/fellow",
    },
    staff={
        "wang.wei@hospital.cn": "D1001",
        "李娜": "D1002",
        "chen.jing@hospital.cn": "D1003",
        "zhou.min@hospital.cn": "D0404",  # left the hospital: no longer a known staff member
    },
    known_staff=frozenset({"D1001", "D1002", "D1003", "D1004"}),
    known_roles=frozenset({"cardiology/attending", "cardiology/resident", "icu/attending"}),
)

KLINIKUM = FeedConfig(
    timezone="Europe/Berlin",
    roles={"Kardiologie Oberarzt": "cardiology/attending",
           "Kardiologie Assistenzarzt": "cardiology/resident"},
    role_from="categories",
    known_staff=frozenset({"B2001", "B2002", "B2003"}),
    known_roles=frozenset({"cardiology/attending", "cardiology/resident"}),
)


def table(shifts: list[Shift], zone: ZoneInfo) -> list[tuple[str, str, str, str]]:
    """Shifts the way the duty desk reads them: local wall-clock times."""
    def local(value: datetime) -> str:
        return value.astimezone(zone).strftime("%Y-%m-%d %H:%M")
    return [(s.role, s.staff_number, local(s.start), local(s.end)) for s in shifts]


def problems(kind: str, data: bytes, source: str, config: FeedConfig,
             window: tuple[datetime, datetime] = WEEK_10) -> list[str]:
    with pytest.raises(FeedInvalid) as caught:
        parse_feed(kind, data, source, config, window)
    return [str(e) for e in caught.value.errors]


# --- iCalendar -------------------------------------------------------------------------------

# A week of cardiology duty as the hospital's roster system exports it (CRLF, VTIMEZONE).
RENJI_WEEK = """\
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//Renji Hospital//Duty Roster 3.2//ZH
BEGIN:VTIMEZONE
TZID:Asia/Shanghai
BEGIN:STANDARD
DTSTART:19700101T000000
TZOFFSETFROM:+0800
TZOFFSETTO:+0800
TZNAME:CST
END:STANDARD
END:VTIMEZONE
BEGIN:VEVENT
UID:att-day-2025w10@roster.renji.example.cn
DTSTART;TZID=Asia/Shanghai:20250303T080000
DTEND;TZID=Asia/Shanghai:20250303T170000
RRULE:FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;UNTIL=20250307T235959Z
EXDATE;TZID=Asia/Shanghai:20250305T080000
SUMMARY:心内科主治医师 Cardiology Attending
ATTENDEE;CN=王伟 Wang Wei;ROLE=REQ-PARTICIPANT:mailto:wang.wei@hospital.cn
END:VEVENT
BEGIN:VEVENT
UID:res-night-20250303@roster.renji.example.cn
DTSTART;TZID=Asia/Shanghai:20250303T200000
DTEND;TZID=Asia/Shanghai:20250304T080000
SUMMARY:心内科住院医师 Cardiology Resident
ATTENDEE;CN=李娜:mailto:li.na@hospital.cn
END:VEVENT
BEGIN:VEVENT
UID:att-cover-20250305@roster.renji.example.cn
DTSTART:20250305T000000Z
DTEND:20250305T090000Z
SUMMARY:心内科主治医师 Cardiology Attending
ATTENDEE;CN="Chen, Jing":mailto:Chen.Jing@Hospital.cn
END:VEVENT
BEGIN:VEVENT
UID:res-night-20250306@roster.renji.example.cn
DTSTART:20250306T200000
DTEND:20250307T080000
SUMMARY:心内科住院医师 Cardiology Resident
X-STAFF-NUMBER:D1004
END:VEVENT
BEGIN:VEVENT
UID:res-night-20250307@roster.renji.example.cn
STATUS:CANCELLED
DTSTART;TZID=Asia/Shanghai:20250307T200000
DTEND;TZID=Asia/Shanghai:20250308T080000
SUMMARY:心内科住院医师 Cardiology Resident
ATTENDEE;CN=已离职 Former Staff:mailto:zhou.min@hospital.cn
END:VEVENT
END:VCALENDAR
""".replace("\n", "\r\n").encode()


def test_a_week_of_cardiology_duty_in_shanghai():
    shifts = parse_feed("ical", RENJI_WEEK, "renji.ics", RENJI, WEEK_10)
    assert table(shifts, SHANGHAI) == [
        ("cardiology/attending", "D1001", "2025-03-03 08:00", "2025-03-03 17:00"),
        # overnight: ends the next morning
        ("cardiology/resident", "D1002", "2025-03-03 20:00", "2025-03-04 08:00"),
        ("cardiology/attending", "D1001", "2025-03-04 08:00", "2025-03-04 17:00"),
        # Wednesday is EXDATEd for Wang Wei; Chen Jing covers, exported in UTC
        ("cardiology/attending", "D1003", "2025-03-05 08:00", "2025-03-05 17:00"),
        ("cardiology/attending", "D1001", "2025-03-06 08:00", "2025-03-06 17:00"),
        # floating time means hospital time
        ("cardiology/resident", "D1004", "2025-03-06 20:00", "2025-03-07 08:00"),
        ("cardiology/attending", "D1001", "2025-03-07 08:00", "2025-03-07 17:00"),
        # Friday's cancelled night (someone who has left) is not a shift and not an error
    ]
    # Every occurrence of the weekly shift points back at its VEVENT for the audit trail.
    assert {s.source for s in shifts if s.staff_number == "D1001"} == {"renji.ics:13"}
    assert shifts[1].end - shifts[1].start == timedelta(hours=12)


def test_a_shift_overlapping_the_window_is_kept_whole():
    window = (datetime(2025, 3, 4, tzinfo=SHANGHAI), datetime(2025, 3, 6, 12, tzinfo=SHANGHAI))
    shifts = parse_feed("ical", RENJI_WEEK, "renji.ics", RENJI, window)
    assert table(shifts, SHANGHAI) == [
        ("cardiology/resident", "D1002", "2025-03-03 20:00", "2025-03-04 08:00"),
        ("cardiology/attending", "D1001", "2025-03-04 08:00", "2025-03-04 17:00"),
        ("cardiology/attending", "D1003", "2025-03-05 08:00", "2025-03-05 17:00"),
        ("cardiology/attending", "D1001", "2025-03-06 08:00", "2025-03-06 17:00"),
    ]


def test_a_swapped_occurrence_replaces_only_that_day():
    swap = vevent(
        "UID:att-day-2025w10@roster.renji.example.cn",
        "RECURRENCE-ID;TZID=Asia/Shanghai:20250306T080000",
        "DTSTART;TZID=Asia/Shanghai:20250306T080000", "DTEND;TZID=Asia/Shanghai:20250306T170000",
        "SUMMARY:心内科主治医师 Cardiology Attending",
        "ATTENDEE;CN=陈静 Chen Jing:mailto:chen.jing@hospital.cn",
    ).replace("\n", "\r\n").encode()
    feed = RENJI_WEEK.replace(b"END:VCALENDAR", swap + b"END:VCALENDAR")
    shifts = parse_feed("ical", feed, "renji.ics", RENJI, WEEK_10)
    thursday = [s for s in shifts if s.start.astimezone(SHANGHAI).day == 6 and
                s.role == "cardiology/attending"]
    assert [(s.staff_number, s.source) for s in thursday] == [("D1003", "renji.ics:51")]
    assert len([s for s in shifts if s.staff_number == "D1001"]) == 3


def test_an_exporter_reusing_one_uid_loses_no_shift():
    def night(day: str, staff: str) -> str:
        return vevent("UID:nachtdienst", f"DTSTART;TZID=Europe/Berlin:202503{day}T200000",
                      f"DTEND;TZID=Europe/Berlin:202503{int(day) + 1:02d}T080000",
                      "CATEGORIES:Kardiologie Assistenzarzt", f"X-STAFF-NUMBER:{staff}")
    feed = vcalendar(night("03", "B2001"), night("04", "B2002"), night("05", "B2001"))
    shifts = parse_feed("ical", feed, "dienstplan.ics", KLINIKUM, YEAR_2025)
    assert [(s.staff_number, s.source) for s in shifts] == [
        ("B2001", "dienstplan.ics:4"), ("B2002", "dienstplan.ics:11"),
        ("B2001", "dienstplan.ics:18")]
    moved = vevent("UID:nachtdienst", "RECURRENCE-ID;TZID=Europe/Berlin:20250304T200000",
                   "DTSTART;TZID=Europe/Berlin:20250304T210000",
                   "DTEND;TZID=Europe/Berlin:20250305T080000",
                   "CATEGORIES:Kardiologie Assistenzarzt", "X-STAFF-NUMBER:B2002")
    feed = vcalendar(night("03", "B2001"), night("04", "B2002"), moved)
    assert problems("ical", feed, "dienstplan.ics", KLINIKUM, YEAR_2025) == [
        "dienstplan.ics:4: UID 'nachtdienst' is used by several VEVENTs without RECURRENCE-ID "
        "(lines 4, 11), so its overrides cannot be matched",
    ]


KLINIKUM_DST = b"""\
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//Klinikum Nord//Dienstplan 7//DE
BEGIN:VEVENT
UID:nacht-20250329@dienstplan.klinikum-nord.de
DTSTART;TZID=Europe/Berlin:20250329T200000
DTEND;TZID=Europe/Berlin:20250330T080000
SUMMARY:Nachtdienst
CATEGORIES:Dienst,Kardiologie Assistenzarzt
ATTENDEE;CN=B2001:mailto:lena.vogel@klinikum-nord.de
END:VEVENT
BEGIN:VEVENT
UID:nacht-20251025@dienstplan.klinikum-nord.de
DTSTART;TZID=Europe/Berlin:20251025T200000
DTEND;TZID=Europe/Berlin:20251026T080000
SUMMARY:Nachtdienst
CATEGORIES:Kardiologie Assistenzarzt
ATTENDEE;CN=B2002:mailto:jonas.berg@klinikum-nord.de
END:VEVENT
BEGIN:VEVENT
UID:oa-nacht-serie@dienstplan.klinikum-nord.de
DTSTART;TZID=Europe/Berlin:20250328T200000
DTEND;TZID=Europe/Berlin:20250329T080000
RRULE:FREQ=DAILY;COUNT=3
SUMMARY:Rufdienst
CATEGORIES:Kardiologie Oberarzt
ATTENDEE;CN=B2003:mailto:petra.koch@klinikum-nord.de
END:VEVENT
END:VCALENDAR
"""


def test_night_shifts_across_dst_changes_last_as_long_as_they_really_are():
    shifts = parse_feed("ical", KLINIKUM_DST, "dienstplan.ics", KLINIKUM, YEAR_2025)
    hours = [(s.staff_number, (s.end - s.start) / timedelta(hours=1)) for s in shifts]
    assert table(shifts, BERLIN) == [
        ("cardiology/attending", "B2003", "2025-03-28 20:00", "2025-03-29 08:00"),
        ("cardiology/attending", "B2003", "2025-03-29 20:00", "2025-03-30 08:00"),
        ("cardiology/resident", "B2001", "2025-03-29 20:00", "2025-03-30 08:00"),
        ("cardiology/attending", "B2003", "2025-03-30 20:00", "2025-03-31 08:00"),
        ("cardiology/resident", "B2002", "2025-10-25 20:00", "2025-10-26 08:00"),
    ]
    # Spring forward loses an hour, fall back gains one; the recurring series keeps its
    # 08:00 handover and so is 11 h on the short night only.
    assert hours == [("B2003", 12), ("B2003", 11), ("B2001", 11), ("B2003", 12), ("B2002", 13)]


def test_duration_counts_hours_exactly_but_days_on_the_wall_clock():
    feed = b"""\
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//Klinikum Nord//Dienstplan 7//DE
BEGIN:VEVENT
UID:nacht-pt12h@dienstplan.klinikum-nord.de
DTSTART;TZID=Europe/Berlin:20250329T200000
DURATION:PT12H
CATEGORIES:Kardiologie Assistenzarzt
X-STAFF-NUMBER:B2001
END:VEVENT
BEGIN:VEVENT
UID:24h-p1d@dienstplan.klinikum-nord.de
DTSTART;TZID=Europe/Berlin:20250329T080000
DURATION:P1D
CATEGORIES:Kardiologie Oberarzt
X-STAFF-NUMBER:B2003
END:VEVENT
END:VCALENDAR
"""
    shifts = parse_feed("ical", feed, "dienstplan.ics", KLINIKUM, YEAR_2025)
    assert table(shifts, BERLIN) == [
        ("cardiology/attending", "B2003", "2025-03-29 08:00", "2025-03-30 08:00"),
        ("cardiology/resident", "B2001", "2025-03-29 20:00", "2025-03-30 09:00"),
    ]
    assert [(s.end - s.start) / timedelta(hours=1) for s in shifts] == [23, 12]


def vcalendar(*events: str) -> bytes:
    """A calendar whose first VEVENT starts on line 4."""
    return ("BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//Renji Hospital//Duty Roster 3.2//ZH\n"
            + "".join(events) + "END:VCALENDAR\n").encode()


def vevent(*lines: str) -> str:
    return "BEGIN:VEVENT\n" + "".join(f"{line}\n" for line in lines) + "END:VEVENT\n"


def test_every_bad_event_is_reported_at_the_line_where_it_starts():
    feed = vcalendar(
        vevent("UID:ok", "DTSTART;TZID=Asia/Shanghai:20250303T080000",      # line 4
               "DTEND;TZID=Asia/Shanghai:20250303T170000",
               "SUMMARY:心内科主治医师", "ATTENDEE;CN=王伟:mailto:wang.wei@hospital.cn"),
        vevent("UID:fellow", "DTSTART;TZID=Asia/Shanghai:20250303T080000",  # line 11
               "DTEND;TZID=Asia/Shanghai:20250303T170000",
               "SUMMARY:心内科进修医师 Cardiology Fellow",
               "ATTENDEE;CN=王伟:mailto:wang.wei@hospital.cn"),
        vevent("UID:stranger", "DTSTART;TZID=Asia/Shanghai:20250304T080000",  # line 18
               "DTEND;TZID=Asia/Shanghai:20250304T170000",
               "SUMMARY:心内科主治医师", "ATTENDEE;CN=赵六:mailto:zhao.liu@hospital.cn"),
        vevent("UID:left", "DTSTART;TZID=Asia/Shanghai:20250304T200000",  # line 25
               "DTEND;TZID=Asia/Shanghai:20250305T080000",
               "SUMMARY:心内科住院医师", "ATTENDEE;CN=周敏:mailto:zhou.min@hospital.cn"),
        vevent("UID:backwards", "DTSTART;TZID=Asia/Shanghai:20250305T200000",  # line 32
               "DTEND;TZID=Asia/Shanghai:20250305T080000",
               "SUMMARY:心内科住院医师", "X-STAFF-NUMBER:D1004"),
        vevent("UID:allday", "DTSTART;VALUE=DATE:20250308",  # line 39
               "DTEND;VALUE=DATE:20250309", "SUMMARY:心内科主治医师", "X-STAFF-NUMBER:D1003"),
        vevent("UID:nostart", "SUMMARY:心内科主治医师", "X-STAFF-NUMBER:D1003"),  # line 46
        vevent("UID:legacy", "DTSTART:20250306T080000", "DTEND:20250306T170000",  # line 51
               "SUMMARY:Cardiology Fellow (legacy)", "X-STAFF-NUMBER:D1003"),
        vevent("UID:nobody", "DTSTART:20250306T080000", "DTEND:20250306T170000",  # line 58
               "SUMMARY:心内科主治医师"),
        vevent("UID:tz", "DTSTART;TZID=Beijing Time:20250306T080000",  # line 64
               "DTEND;TZID=Beijing Time:20250306T170000",
               "SUMMARY:心内科主治医师", "X-STAFF-NUMBER:D1003"),
    )
    assert problems("ical", feed, "renji.ics", RENJI) == [
        "renji.ics:11: role label '心内科进修医师 Cardiology Fellow' is not mapped to a role",
        "renji.ics:18: person '赵六' / 'zhao.liu@hospital.cn' is neither in the staff map "
        "nor a staff number",
        "renji.ics:25: 'zhou.min@hospital.cn' maps to staff number 'D0404', which is not a "
        "known staff member",
        "renji.ics:32: end 2025-03-05 08:00+08:00 is not after start 2025-03-05 20:00+08:00",
        "renji.ics:39: all-day event on 2025-03-08: a shift needs a start and an end time",
        "renji.ics:46: VEVENT has no DTSTART",
        "renji.ics:51: role label 'Cardiology Fellow (legacy)' maps to 'cardiology/fellow', "
        "which is not a known role",
        "renji.ics:58: VEVENT has no ATTENDEE or X-STAFF-NUMBER, so nobody holds the shift",
        "renji.ics:64: DTSTART uses unknown time zone 'Beijing Time' (not an IANA or Windows "
        "name, and no VTIMEZONE defines it)",
    ]


def test_without_a_staff_map_the_feed_must_carry_staff_numbers():
    feed = vcalendar(vevent(
        "UID:n1", "DTSTART;TZID=Europe/Berlin:20250303T200000",
        "DTEND;TZID=Europe/Berlin:20250304T080000", "CATEGORIES:Kardiologie Assistenzarzt",
        "ATTENDEE;CN=B2999:mailto:neu@klinikum-nord.de"))
    assert problems("ical", feed, "dienstplan.ics", KLINIKUM, YEAR_2025) == [
        "dienstplan.ics:4: none of 'B2999' / 'neu@klinikum-nord.de' is a known staff number",
    ]


@pytest.mark.parametrize(("text", "expected"), [
    ("<!DOCTYPE html>\n<html><body>Login required</body></html>\n",
     ["roster.ics: not an iCalendar file: it starts with '<!DOCTYPE html>'"]),
    ("", ["roster.ics: not an iCalendar file: it starts with 'nothing'"]),
    ("BEGIN:VCALENDAR\nVERSION:2.0\nBEGIN:VEVENT\nDTSTART 20250303T080000\nEND:VEVENT\n",
     ["roster.ics:4: not an iCalendar content line: 'DTSTART 20250303T080000'",
      "roster.ics:1: BEGIN:VCALENDAR is never closed"]),
    ("BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:x\nEND:VCALENDAR\n",
     ["roster.ics:2: BEGIN:VEVENT is never closed (END:VCALENDAR at line 4)"]),
    ("BEGIN:VCALENDAR\nBEGIN:VEVENT\nDTSTART:2025-03-03 08:00\nDTEND:20250303T170000\n"
     "SUMMARY:心内科主治医师\nX-STAFF-NUMBER:D1003\nEND:VEVENT\nEND:VCALENDAR\n",
     ["roster.ics:2: cannot read DTSTART: Wrong datetime format: 2025-03-03 08:00"]),
])
def test_malformed_calendar_text_is_reported_not_guessed(text, expected):
    assert problems("ical", text.encode(), "roster.ics", RENJI) == expected


# --- CSV -------------------------------------------------------------------------------------

RENJI_CSV = FeedConfig(
    timezone="Asia/Shanghai",
    roles=RENJI.roles,
    known_staff=RENJI.known_staff,
    known_roles=RENJI.known_roles,
    columns={"role": "岗位", "staff_number": "工号", "date": "日期",
             "start_time": "开始时间", "end_time": "结束时间"},
    encoding="gb18030",
    date_formats=("%Y-%m-%d", "%Y/%m/%d"),
)
RENJI_DUTY_CSV = """\
岗位,工号,姓名,日期,开始时间,结束时间,备注
心内科主治医师,D1001,王伟,2025-03-03,08:00,17:00,
心内科住院医师,D1002,李娜,2025-03-03,20:00,08:00,夜班
心内科住院医师,D1004,张强,2025/03/04,08:00,08:00,24小时值班
心内科主治医师,D1003,陈静,2025-03-05,17:00,24:00,
""".replace("\n", "\r\n").encode("gb18030")


def test_gb18030_csv_with_chinese_headers_and_overnight_rows():
    shifts = parse_feed("csv", RENJI_DUTY_CSV, "renji-duty.csv", RENJI_CSV, WEEK_10)
    assert table(shifts, SHANGHAI) == [
        ("cardiology/attending", "D1001", "2025-03-03 08:00", "2025-03-03 17:00"),
        ("cardiology/resident", "D1002", "2025-03-03 20:00", "2025-03-04 08:00"),
        ("cardiology/resident", "D1004", "2025-03-04 08:00", "2025-03-05 08:00"),
        ("cardiology/attending", "D1003", "2025-03-05 17:00", "2025-03-06 00:00"),
    ]
    assert [s.source for s in shifts] == [f"renji-duty.csv:{n}" for n in (2, 3, 4, 5)]


def test_csv_in_the_wrong_encoding_names_the_line():
    config = replace(RENJI_CSV, encoding="utf-8")
    assert problems("csv", RENJI_DUTY_CSV, "renji-duty.csv", config) == [
        "renji-duty.csv:1: not valid UTF-8 text (byte 1 of the line)",
    ]


KLINIKUM_CSV = FeedConfig(
    timezone="Europe/Berlin",
    roles=KLINIKUM.roles,
    known_staff=KLINIKUM.known_staff,
    known_roles=KLINIKUM.known_roles,
    columns={"role": "Position", "staff_number": "Personalnummer", "start": "Beginn",
             "end": "Ende"},
    delimiter=";",
    date_formats=("%d.%m.%Y",),
)


def test_csv_reports_every_bad_row_with_its_line_and_yields_nothing():
    feed = b"""\
Position;Personalnummer;Beginn;Ende;Bemerkung
Kardiologie Oberarzt;B2003;03.03.2025 08:00;03.03.2025 16:00;
Kardiologie Oberarzt;B9999;03.03.2025 16:00;04.03.2025 08:00;
Kardiologie Fellow;B2001;31.02.2025 08:00;31.02.2025 16:00;
Kardiologie Assistenzarzt;B2002;04.03.2025 20:00;04.03.2025 08:00;
Kardiologie Assistenzarzt;B2002;05.03.2025 08:00
Kardiologie Oberarzt;B2003;05.03.2025 08:00;05.03.2025 16:00;"Tausch mit
Dr. Koch, siehe Mail"
;B2001;06.03.2025 08:00;06.03.2025 16:00;
"""
    assert problems("csv", feed, "dienstplan.csv", KLINIKUM_CSV, YEAR_2025) == [
        "dienstplan.csv:3: unknown staff number 'B9999'",
        "dienstplan.csv:4: role label 'Kardiologie Fellow' is not mapped to a role",
        "dienstplan.csv:4: Beginn '31.02.2025 08:00' is not a date and time like 31.03.2025 20:00",
        "dienstplan.csv:4: Ende '31.02.2025 16:00' is not a date and time like 31.03.2025 20:00",
        "dienstplan.csv:5: end 2025-03-04 08:00+01:00 is not after start 2025-03-04 20:00+01:00",
        "dienstplan.csv:6: row has 3 cells but the header has 5",
        "dienstplan.csv:9: column 'Position' is empty",
    ]


def test_csv_missing_column_is_reported_on_the_header_line():
    feed = b"Position;Personalnummer;Start;Ende\n"
    assert problems("csv", feed, "dienstplan.csv", KLINIKUM_CSV, YEAR_2025) == [
        "dienstplan.csv:1: missing column(s) 'Beginn'; the header has: "
        "Position, Personalnummer, Start, Ende",
    ]


def test_csv_overnight_across_spring_forward_and_duplicate_rows():
    config = FeedConfig(
        timezone="Europe/Berlin", roles=KLINIKUM.roles, known_staff=KLINIKUM.known_staff,
        known_roles=KLINIKUM.known_roles, delimiter=";", date_formats=("%d.%m.%Y",),
        columns={"role": "Position", "staff_number": "PNr", "date": "Datum",
                 "start_time": "Von", "end_time": "Bis"})
    feed = b"""\
Position;PNr;Datum;Von;Bis
Kardiologie Assistenzarzt;B2001;29.03.2025;20:00;08:00
Kardiologie Oberarzt;B2003;29.03.2025;08:00;20:00
Kardiologie Assistenzarzt;B2001;29.03.2025;20:00;08:00
"""
    shifts = parse_feed("csv", feed, "dienstplan.csv", config, YEAR_2025)
    assert table(shifts, BERLIN) == [
        ("cardiology/attending", "B2003", "2025-03-29 08:00", "2025-03-29 20:00"),
        ("cardiology/resident", "B2001", "2025-03-29 20:00", "2025-03-30 08:00"),
    ]
    assert shifts[1].end - shifts[1].start == timedelta(hours=11)
    assert shifts[1].source == "dienstplan.csv:2"  # the repeated row 4 is dropped


# --- FHIR ------------------------------------------------------------------------------------

FHIR_CONFIG = FeedConfig(
    timezone="Asia/Shanghai",
    roles=RENJI.roles,
    known_staff=RENJI.known_staff,
    known_roles=RENJI.known_roles,
    staff_identifier_system="https://renji.example.cn/fhir/staff-number",
)
BASE = "https://his.renji.example.cn/fhir"


def bundle(*resources: dict) -> bytes:
    entries = [{"fullUrl": f"{BASE}/{r['resourceType']}/{r.get('id')}", "resource": r}
               for r in resources]
    document = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    return json.dumps(document, ensure_ascii=False, indent=2).encode()


def slot(ident: str, status: str, start: str, end: str, schedule: str) -> dict:
    return {"resourceType": "Slot", "id": ident, "status": status, "start": start, "end": end,
            "schedule": {"reference": schedule}}


WANG = {"resourceType": "Practitioner", "id": "p-8841", "name": [{"text": "王伟"}],
        "identifier": [
            {"system": "urn:oid:2.16.156.10011.1.4", "value": "110101198001011234"},
            {"system": "https://renji.example.cn/fhir/staff-number", "value": "D1001"}]}
WANG_ATTENDING = {
    "resourceType": "PractitionerRole", "id": "pr-wang-att", "active": True,
    "practitioner": {"reference": "Practitioner/p-8841"},
    "code": [{"coding": [{"system": "https://renji.example.cn/fhir/duty-role",
                          "code": "CARD-ATT"}],
              "text": "心内科主治医师 Cardiology Attending"}]}
LI_RESIDENT = {  # her Practitioner is not in the export: known by the reference id
    "resourceType": "PractitionerRole", "id": "pr-li-res",
    "practitioner": {"reference": "Practitioner/D1002"},
    "code": [{"coding": [{"code": "CARD-RES"}]}]}
ATTENDING_ROTA = {"resourceType": "Schedule", "id": "sch-card-att",
                  "actor": [{"reference": "PractitionerRole/pr-wang-att"},
                            {"reference": "Location/ward-7"}]}
RESIDENT_ROTA = {"resourceType": "Schedule", "id": "sch-card-res",
                 "actor": [{"reference": f"{BASE}/PractitionerRole/pr-li-res"}]}


def test_fhir_bundle_busy_slots_become_shifts():
    feed = bundle(
        WANG, WANG_ATTENDING, LI_RESIDENT, ATTENDING_ROTA, RESIDENT_ROTA,
        slot("s1", "busy", "2025-03-03T08:00:00+08:00", "2025-03-03T17:00:00+08:00",
             "Schedule/sch-card-att"),
        slot("s2", "free", "2025-03-04T20:00:00+08:00", "2025-03-05T08:00:00+08:00",
             "Schedule/sch-card-res"),
        slot("s3", "busy-tentative", "2025-03-03T20:00:00+08:00", "2025-03-04T08:00:00.000+08:00",
             "Schedule/sch-card-res"),
        slot("s4", "busy", "2025-03-04T00:00:00Z", "2025-03-04T09:00:00Z",
             "Schedule/sch-card-att"),
        slot("s5", "busy", "2025-04-01T08:00:00+08:00", "2025-04-01T17:00:00+08:00",
             "Schedule/sch-card-att"),
        slot("s6", "entered-in-error", "bogus", "bogus", "Schedule/nowhere"),
    )
    shifts = parse_feed("fhir", feed, "renji-fhir.json", FHIR_CONFIG, WEEK_10)
    assert table(shifts, SHANGHAI) == [
        ("cardiology/attending", "D1001", "2025-03-03 08:00", "2025-03-03 17:00"),
        ("cardiology/resident", "D1002", "2025-03-03 20:00", "2025-03-04 08:00"),
        ("cardiology/attending", "D1001", "2025-03-04 08:00", "2025-03-04 17:00"),
    ]
    assert [s.source for s in shifts] == [
        "renji-fhir.json#Slot/s1", "renji-fhir.json#Slot/s3", "renji-fhir.json#Slot/s4"]


def test_fhir_bundle_problems_name_the_resource():
    unmapped = {**LI_RESIDENT, "id": "pr-zhao", "code": [{"text": "心内科进修医师"}]}
    feed = bundle(
        WANG, WANG_ATTENDING, ATTENDING_ROTA, unmapped,
        {"resourceType": "Schedule", "id": "sch-fellow",
         "actor": [{"reference": "PractitionerRole/pr-zhao"}]},
        slot("s1", "busy", "2025-03-03T08:00:00+08:00", "2025-03-03T17:00:00+08:00",
             "Schedule/sch-card-res"),
        slot("s2", "busy", "2025-03-03T08:00", "2025-03-03T17:00:00+08:00",
             "Schedule/sch-card-att"),
        slot("s3", "busy", "2025-03-04T08:00:00+08:00", "2025-03-04T17:00:00+08:00",
             "Practitioner/p-8841"),
        slot("s4", "busy", "2025-03-05T08:00:00+08:00", "2025-03-05T17:00:00+08:00",
             "Schedule/sch-fellow"),
        slot("s5", "booked", "2025-03-06T08:00:00+08:00", "2025-03-06T17:00:00+08:00",
             "Schedule/sch-card-att"),
        {"resourceType": "Slot", "id": "s6", "status": "busy", "end": "2025-03-06T08:00:00+08:00",
         "schedule": {"reference": "Schedule/sch-card-att"}},
    )
    assert problems("fhir", feed, "renji-fhir.json", FHIR_CONFIG) == [
        "renji-fhir.json#Slot/s1: Slot.schedule points to 'Schedule/sch-card-res', which is not "
        "in the bundle",
        "renji-fhir.json#Slot/s2: Slot.start '2025-03-03T08:00' is not a FHIR instant with "
        "seconds and an offset, e.g. 2025-03-03T08:00:00+08:00",
        "renji-fhir.json#Slot/s3: Slot.schedule points to 'Practitioner/p-8841', which is a "
        "Practitioner, not a Schedule",
        "renji-fhir.json#PractitionerRole/pr-zhao: role label '心内科进修医师' is not mapped "
        "to a role",
        "renji-fhir.json#Slot/s5: Slot.status 'booked' is not one of busy, busy-tentative, "
        "free, busy-unavailable, entered-in-error",
        "renji-fhir.json#Slot/s6: Slot.start is missing",
    ]


@pytest.mark.parametrize(("data", "expected"), [
    (b'{"resourceType": "Patient", "id": "p1"}',
     "renji-fhir.json: expected a FHIR Bundle, found resourceType 'Patient'"),
    (b'{\n  "resourceType": "Bundle",\n  "entry": [,]\n}',
     "renji-fhir.json:3: not valid JSON: Expecting value (column 13)"),
])
def test_fhir_that_is_not_a_bundle(data, expected):
    assert problems("fhir", data, "renji-fhir.json", FHIR_CONFIG) == [expected]


# --- the dispatcher --------------------------------------------------------------------------

def test_our_own_mistakes_are_value_errors_not_feed_problems():
    with pytest.raises(ValueError, match="unknown feed kind 'xls'"):
        parse_feed("xls", b"", "roster.xls", RENJI, WEEK_10)
    with pytest.raises(ValueError, match="timezone-aware"):
        naive = (datetime(2025, 3, 3), datetime(2025, 3, 10))
        parse_feed("ical", RENJI_WEEK, "renji.ics", RENJI, naive)
    with pytest.raises(ValueError, match="not an IANA time zone"):
        FeedConfig(timezone="Beijing", roles={}, known_staff=frozenset(), known_roles=frozenset())
