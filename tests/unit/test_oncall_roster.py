"""Who holds a role at an instant: what a nurse paging at 03:00, or the roster office, checks."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from appservice.oncall.swap import swap
from carematrix.oncall.model import Override, Shift
from carematrix.oncall.roster import Roster

BERLIN = ZoneInfo("Europe/Berlin")
ROLE = "cardiology/attending"


def t(day: int, hour: int, minute: int = 0, fold: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=BERLIN, fold=fold)


def day_and_night(days: range = range(2, 6)) -> list[Shift]:
    """Day doctor D1001 08:00–20:00, night doctor N2001 20:00–08:00 next morning."""
    shifts = []
    for d in days:
        shifts.append(Shift(ROLE, "D1001", t(d, 8), t(d, 20), f"roster.csv:{d}"))
        shifts.append(Shift(ROLE, "N2001", t(d, 20), t(d + 1, 8), f"roster.csv:{d}n"))
    return shifts


ROSTER = Roster(day_and_night())


def test_message_at_0759_reaches_the_night_doctor_and_at_0800_the_day_doctor():
    assert ROSTER.on_duty(ROLE, t(3, 7, 59)) == ("N2001",)
    assert ROSTER.on_duty(ROLE, t(3, 8, 0)) == ("D1001",)
    assert ROSTER.on_duty(ROLE, t(3, 8, 1)) == ("D1001",)
    assert ROSTER.on_duty(ROLE, t(3, 19, 59)) == ("D1001",)
    assert ROSTER.on_duty(ROLE, t(3, 20, 0)) == ("N2001",)
    assert ROSTER.on_duty(ROLE, t(3, 3, 0)) == ("N2001",)


def test_the_instant_may_be_given_in_any_time_zone():
    assert ROSTER.on_duty(ROLE, datetime(2026, 11, 3, 7, 0, tzinfo=UTC)) == ("D1001",)  # 08:00 CET
    assert ROSTER.on_duty(ROLE, datetime(2026, 11, 3, 6, 59, tzinfo=UTC)) == ("N2001",)


def test_a_naive_time_is_refused_rather_than_guessed():
    with pytest.raises(ValueError, match="timezone-aware"):
        ROSTER.on_duty(ROLE, datetime(2026, 11, 3, 8, 0))
    with pytest.raises(ValueError):
        Roster([Shift(ROLE, "D1001", datetime(2026, 11, 3, 8), t(3, 20))])


def test_a_shift_that_does_not_end_after_it_starts_is_refused():
    with pytest.raises(ValueError, match="roster.csv:9"):
        Roster([Shift(ROLE, "D1001", t(3, 20), t(3, 8), "roster.csv:9")])


def test_before_and_after_the_roster_and_for_unknown_roles_nobody_is_on_duty():
    assert ROSTER.on_duty(ROLE, t(1, 12)) == ()
    assert ROSTER.on_duty(ROLE, t(20, 12)) == ()
    assert ROSTER.on_duty("neurology/attending", t(3, 12)) == ()


def test_two_people_can_hold_one_role():
    roster = Roster(
        [
            Shift(ROLE, "D1002", t(3, 9), t(3, 17)),
            *day_and_night(),
        ]
    )
    assert roster.on_duty(ROLE, t(3, 8, 30)) == ("D1001",)
    assert roster.on_duty(ROLE, t(3, 12)) == ("D1001", "D1002")
    assert roster.on_duty(ROLE, t(3, 17)) == ("D1001",)
    assert set(roster.on_duty(ROLE, t(3, 12))) == {"D1001", "D1002"}


def test_the_same_person_rostered_twice_is_listed_once():
    roster = Roster(
        [Shift(ROLE, "D1001", t(3, 8), t(3, 20)), Shift(ROLE, "D1001", t(3, 12), t(3, 22))]
    )
    assert roster.on_duty(ROLE, t(3, 13)) == ("D1001",)
    assert roster.on_duty(ROLE, t(3, 21)) == ("D1001",)


def test_a_cover_until_1400_replaces_the_rostered_doctor_then_stops():
    cover = Override(ROLE, "C3001", t(3, 10), t(3, 14), replaces="D1001", by="D1001")
    roster = ROSTER.with_overrides([cover])
    assert roster.on_duty(ROLE, t(3, 9, 59)) == ("D1001",)
    assert roster.on_duty(ROLE, t(3, 10)) == ("C3001",)
    assert roster.on_duty(ROLE, t(3, 13, 59)) == ("C3001",)
    assert roster.on_duty(ROLE, t(3, 14)) == ("D1001",)
    assert roster.is_on_duty("C3001", t(3, 12)) and not roster.is_on_duty("D1001", t(3, 12))
    assert not roster.is_on_duty("C3001", t(3, 14))
    # the original index is untouched: building the next roster aside is safe
    assert ROSTER.on_duty(ROLE, t(3, 12)) == ("D1001",)


def test_a_cover_without_replaces_adds_a_person():
    extra = Override(ROLE, "C3001", t(3, 10), t(3, 14), replaces=None, by="D1001")
    roster = Roster(day_and_night(), [extra])
    assert roster.on_duty(ROLE, t(3, 12)) == ("D1001", "C3001")
    assert roster.on_duty(ROLE, t(3, 14)) == ("D1001",)


def test_a_cover_only_replaces_while_the_replaced_person_holds_the_role():
    # covers D1001 until 22:00, but D1001's shift ends at 20:00: the night doctor stays
    cover = Override(ROLE, "C3001", t(3, 18), t(3, 22), replaces="D1001", by="D1001")
    roster = ROSTER.with_overrides([cover])
    assert roster.on_duty(ROLE, t(3, 19)) == ("C3001",)
    assert roster.on_duty(ROLE, t(3, 21)) == ("N2001",)


def test_a_cover_for_the_cover_applies_in_order():
    first = Override(ROLE, "C3001", t(3, 10), t(3, 14), replaces="D1001", by="D1001")
    second = Override(ROLE, "C3002", t(3, 12), t(3, 13), replaces="C3001", by="C3001")
    roster = ROSTER.with_overrides([first]).with_overrides([second])
    assert roster.on_duty(ROLE, t(3, 11)) == ("C3001",)
    assert roster.on_duty(ROLE, t(3, 12, 30)) == ("C3002",)
    assert roster.on_duty(ROLE, t(3, 13, 30)) == ("C3001",)


def test_a_swap_trades_two_shifts():
    monday = Shift(ROLE, "D1001", t(2, 8), t(2, 20))
    tuesday = Shift(ROLE, "D1002", t(3, 8), t(3, 20))
    roster = Roster([monday, tuesday], swap(monday, tuesday, by="D1001"))
    assert roster.on_duty(ROLE, t(2, 12)) == ("D1002",)
    assert roster.on_duty(ROLE, t(3, 12)) == ("D1001",)
    assert all(o.kind == "swap" for o in swap(monday, tuesday, by="D1001"))
    with pytest.raises(ValueError):
        swap(monday, monday, by="D1001")


def test_gaps_and_the_now_next_listing():
    shifts = [
        Shift(ROLE, "D1001", t(3, 8), t(3, 14)),
        Shift(ROLE, "D1002", t(3, 16), t(3, 20)),
    ]
    roster = Roster(shifts)
    assert roster.gaps(ROLE, t(3, 7), t(3, 21)) == [
        (t(3, 7), t(3, 8)),
        (t(3, 14), t(3, 16)),
        (t(3, 20), t(3, 21)),
    ]
    assert roster.holders_between(ROLE, t(3, 12), t(3, 18)) == [
        (t(3, 12), t(3, 14), ("D1001",)),
        (t(3, 14), t(3, 16), ()),
        (t(3, 16), t(3, 18), ("D1002",)),
    ]
    assert ROSTER.gaps(ROLE, t(3, 0), t(5, 0)) == []
    assert roster.holders_between(ROLE, t(3, 12), t(3, 12)) == []


def test_listing_is_shown_in_the_callers_time_zone():
    (first, *_rest) = ROSTER.holders_between(ROLE, t(3, 12), t(4, 12))
    assert first[1] == t(3, 20) and first[1].tzinfo is BERLIN


def test_next_change_is_the_next_hand_over():
    assert ROSTER.next_change(ROLE, t(3, 7)) == t(3, 8)
    assert ROSTER.next_change(ROLE, t(3, 8)) == t(3, 20)  # strictly after
    assert ROSTER.next_change(ROLE, t(5, 21)) == t(6, 8)  # the last shift ends
    assert ROSTER.next_change(ROLE, t(6, 8)) is None
    assert ROSTER.next_change("neurology/attending", t(3, 8)) is None


def test_back_to_back_shifts_of_one_person_are_no_hand_over():
    roster = Roster(
        [Shift(ROLE, "D1001", t(3, 8), t(3, 14)), Shift(ROLE, "D1001", t(3, 14), t(3, 20))]
    )
    assert roster.next_change(ROLE, t(3, 9)) == t(3, 20)
    assert roster.holders_between(ROLE, t(3, 8), t(3, 20)) == [(t(3, 8), t(3, 20), ("D1001",))]


def test_roles_of_a_person():
    roster = Roster(
        [
            *day_and_night(),
            Shift("icu/consultant", "D1001", t(3, 12), t(3, 22)),
        ]
    )
    assert roster.roles_of("D1001", t(3, 13)) == ("cardiology/attending", "icu/consultant")
    assert roster.roles_of("D1001", t(3, 21)) == ("icu/consultant",)
    assert roster.roles_of("D1001", t(3, 23)) == ()
    assert roster.roles_of("X9999", t(3, 13)) == ()
    assert roster.is_on_duty("N2001", t(4, 2)) and not roster.is_on_duty("N2001", t(4, 9))
    assert roster.roles() == ("cardiology/attending", "icu/consultant")


def test_the_repeated_hour_when_clocks_go_back_is_ordered_by_real_time():
    # 25 Oct 2026, 03:00 CEST -> 02:00 CET: 02:00–03:00 happens twice
    def oct25(hour: int, minute: int = 0, fold: int = 0) -> datetime:
        return datetime(2026, 10, 25, hour, minute, tzinfo=BERLIN, fold=fold)

    early = Shift(ROLE, "N2001", datetime(2026, 10, 24, 20, tzinfo=BERLIN), oct25(2, 30))
    late = Shift(ROLE, "N2002", oct25(2, 30), oct25(8))
    roster = Roster([early, late])
    assert roster.on_duty(ROLE, oct25(2, 15)) == ("N2001",)  # first 02:15 (CEST)
    assert roster.on_duty(ROLE, oct25(2, 15, fold=1)) == ("N2002",)  # second 02:15 (CET)
    assert roster.next_change(ROLE, oct25(2, 15, fold=1)) == oct25(8)
    hand_over = roster.next_change(ROLE, oct25(1))
    assert hand_over is not None and hand_over.astimezone(UTC) == datetime(
        2026, 10, 25, 0, 30, tzinfo=UTC
    )


def test_the_index_agrees_with_reading_the_roster_by_hand():
    rng = random.Random(3)
    base = t(2, 0)
    hours = [base + timedelta(minutes=30 * i) for i in range(200)]
    staff = ["A", "B", "C", "D"]
    shifts = []
    for _ in range(40):
        i = rng.randrange(0, 190)
        shifts.append(Shift(ROLE, rng.choice(staff), hours[i], hours[i + rng.randint(1, 9)]))
    overrides = []
    for _ in range(10):
        i = rng.randrange(0, 190)
        replaces = rng.choice([None, *staff])
        overrides.append(
            Override(ROLE, rng.choice("XY"), hours[i], hours[i + rng.randint(1, 9)], replaces, "Z")
        )
    roster = Roster(shifts, overrides)

    def by_hand(at: datetime) -> tuple[str, ...]:
        holders: list[str] = []
        for s in sorted(shifts, key=lambda s: (s.start, s.staff_number)):
            if s.start <= at < s.end and s.staff_number not in holders:
                holders.append(s.staff_number)
        for o in overrides:
            if not o.start <= at < o.end:
                continue
            if o.replaces is None and o.staff_number not in holders:
                holders.append(o.staff_number)
            elif o.replaces in holders:
                i = holders.index(o.replaces)
                if o.staff_number in holders:
                    del holders[i]
                else:
                    holders[i] = o.staff_number
        return tuple(holders)

    for at in hours + [h + timedelta(minutes=1) for h in hours]:
        assert roster.on_duty(ROLE, at) == by_hand(at), at
    timeline = roster.holders_between(ROLE, hours[0], hours[-1])
    assert all(a < b for a, b, _ in timeline)
    assert all(x[2] != y[2] for x, y in zip(timeline, timeline[1:], strict=False))
