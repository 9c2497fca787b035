"""The no-forward store on real SQLite and PostgreSQL: where protected content came from,
who may not re-post it, and that first origin wins."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from carematrix.hsdb.audit_store import sql
from carematrix.hsdb.forward_store import (
    ORIGIN_TABLE,
    TABLE,
    ForeignMatch,
    find_foreign,
    key,
    record_origin,
)
from carematrix.hsdb.migrations import upgrade
from carematrix.protect import copy_decision
from carematrix.protect.fingerprint import content_fingerprints, media_hash_fingerprint
from carematrix.protect.model import Fingerprints
from carematrix_ops.audit_db import AuditDb, connect

ICU = "!icu:hospital.example"  # protected
ICU2 = "!icu2:hospital.example"  # protected too
WARD = "!ward7:hospital.example"  # not protected
T0 = 1_795_000_000_000

TEXT = (
    "Bed 12 Mr Wang Jianguo, 67M, post-op day 2 after right hemicolectomy. K+ 6.8 mmol/L on "
    "the 06:00 bloods, ECG shows peaked T waves. Started calcium gluconate and "
    "insulin-dextrose, repeat potassium at 08:00 and call the surgical registrar if no better."
)
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.fixture
def store(db_url: str) -> Iterator[AuditDb]:
    db = connect(db_url)
    upgrade(db.transaction, db.dialect)
    yield db
    db.close()


def msg(body: str, **extra: object) -> Fingerprints:
    return content_fingerprints("m.room.message", {"msgtype": "m.text", "body": body, **extra})


def record(db: AuditDb, f: Fingerprints, room: str, event: str, *extra: str) -> None:
    with db.transaction() as txn:
        record_origin(txn, db.dialect, [*f.all(), *extra], room, event, T0)


def find(db: AuditDb, f: Fingerprints, room: str, *extra: str) -> ForeignMatch | None:
    with db.transaction(read_only=True) as txn:
        return find_foreign(txn, db.dialect, f, extra, room)


def count(db: AuditDb, table: str) -> int:
    with db.transaction(read_only=True) as txn:
        txn.execute(f"SELECT COUNT(*) FROM {table}")
        return int(txn.fetchone()[0])


def test_a_copy_posted_in_another_room_is_found_with_its_origin(store):
    original = msg(TEXT)
    record(store, original, ICU, "$orig")
    match = find(store, msg(TEXT.upper() + " !!"), WARD)
    assert match is not None
    assert (match.origin_room, match.origin_event) == (ICU, "$orig")
    assert match.matched & original.text
    assert match.matched <= original.all()


def test_the_same_room_may_repeat_its_own_content(store):
    record(store, msg(TEXT), ICU, "$orig")
    assert find(store, msg(TEXT), ICU) is None


def test_unrelated_and_short_messages_are_not_matched(store):
    record(store, msg(TEXT), ICU, "$orig")
    record(store, msg("thanks"), ICU, "$thanks")  # no fingerprints: nothing stored
    assert find(store, msg("thanks"), WARD) is None
    assert (
        find(store, msg("Theatre list: first case delayed until 10:30, anaesthetics aware."), WARD)
        is None
    )
    assert find(store, Fingerprints(), WARD) is None


def test_first_origin_wins(store):
    original = msg(TEXT)
    record(store, original, ICU, "$first")
    record(store, original, ICU2, "$second")  # re-posted in another protected room
    match = find(store, original, WARD)
    assert match is not None and (match.origin_room, match.origin_event) == (ICU, "$first")
    # the second room doesn't become an origin: posting it there again is still a copy
    again = find(store, original, ICU2)
    assert again is not None and again.origin_room == ICU
    assert find(store, original, ICU) is None
    # recording the same event twice changes nothing either
    record(store, original, ICU, "$first")
    assert count(store, TABLE) == len(original.all())


def test_same_file_bytes_under_a_new_uri_are_found_through_the_hash(store):
    image = content_fingerprints(
        "m.room.message", {"msgtype": "m.image", "body": "a.png", "url": "mxc://hs/orig"}
    )
    record(store, image, ICU, "$img", media_hash_fingerprint(SHA))
    reupload = content_fingerprints(
        "m.room.message", {"msgtype": "m.image", "body": "b.png", "url": "mxc://hs/new"}
    )
    assert find(store, reupload, WARD) is None
    match = find(store, reupload, WARD, media_hash_fingerprint(SHA.upper()))
    assert match is not None and match.matched == {"h:" + SHA} and match.origin_event == "$img"
    forwarded = content_fingerprints(
        "m.room.message",
        {"msgtype": "m.image", "body": "c.png", "file": {"url": "mxc://hs/orig"}},
    )
    assert find(store, forwarded, WARD).matched == {"mxc:hs/orig"}


def test_an_edit_that_smuggles_protected_text_in_is_found(store):
    record(store, msg(TEXT), ICU, "$orig")
    edit = content_fingerprints(
        "m.room.message",
        {
            "body": "* see below",
            "m.new_content": {"body": "FYI: " + TEXT},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$harmless"},
        },
    )
    match = find(store, edit, WARD)
    assert match is not None and match.origin_event == "$orig"


def test_a_pasted_paragraph_is_found_but_common_phrases_are_not(store):
    report = (
        "CT pulmonary angiogram excluded pulmonary embolism but showed a 9 mm spiculated nodule "
        "in the left upper lobe that needs outpatient follow-up with a repeat CT in three "
        "months. Please review the patient before discharge and continue current management."
    )
    record(store, msg(report), ICU, "$report")
    paste = msg(
        "Clinic list for Thursday: new referral from ICU, summary says 9 mm spiculated nodule "
        "in the left upper lobe that needs outpatient follow-up - please book."
    )
    match = find(store, paste, WARD)
    assert match is not None and match.origin_event == "$report"
    assert match.matched <= paste.shingles
    common = msg(
        "Please review the patient in bay 2 before lunch, continue current management, "
        "daughter visiting at 3pm and would like an update on the plan."
    )
    assert find(store, common, WARD) is None


def test_the_decision_is_made_per_origin_event(store):
    shingles = [f"s:{i:016x}" for i in range(6)]
    candidate = Fingerprints(shingles=frozenset(shingles))
    record(store, Fingerprints(shingles=frozenset(shingles[0:2])), ICU, "$a")
    record(store, Fingerprints(shingles=frozenset(shingles[2:4])), ICU, "$b")
    record(store, Fingerprints(shingles=frozenset(shingles[4:5])), ICU2, "$c")
    # five shared in all, but never more than two with any one event: not a copy of any
    assert find(store, candidate, WARD) is None
    record(store, Fingerprints(shingles=frozenset(shingles[5:6])), ICU, "$b")
    # first origin wins per fingerprint; $b now holds three of the six: half of the text
    match = find(store, candidate, WARD)
    assert match is not None and match.origin_event == "$b"
    assert match.matched == {shingles[2], shingles[3], shingles[5]}


def test_an_exact_match_is_preferred_over_more_shingles(store):
    long_text = TEXT + " " + TEXT.replace("Wang", "Zhang").replace("12", "14")
    record(store, msg(long_text), ICU, "$long")
    record(store, msg("Bed 3 Ms Li: transfusion reaction, stop the unit now."), ICU2, "$short")
    reworded = long_text.replace("Started", "We started")
    candidate = msg(reworded + "\n\n> Bed 3 Ms Li: transfusion reaction, stop the unit now.")
    match = find(store, candidate, WARD)
    assert match is not None and match.origin_event == "$short"
    # without the quote, the many shared shingles with $long decide
    assert find(store, msg(reworded), WARD).origin_event == "$long"


def test_lookups_of_more_keys_than_one_statement_takes(store):
    big = Fingerprints(shingles=frozenset(f"s:{i:016x}" for i in range(1_300)))
    record(store, big, ICU, "$big")
    assert count(store, TABLE) == 1_300
    match = find(store, big, WARD)
    assert match is not None and len(match.matched) == 1_300


def test_origin_rows_keep_room_event_and_time(store):
    record(store, msg(TEXT), ICU, "$orig")
    with store.transaction(read_only=True) as txn:
        txn.execute(
            sql(
                f"SELECT id, room_id, event_id, ts FROM {ORIGIN_TABLE} WHERE id = ?", store.dialect
            ),
            (key("$orig"),),
        )
        assert txn.fetchall() == [(key("$orig"), ICU, "$orig", T0)]


def test_keys_are_signed_64_bit_and_stable():
    f = msg(TEXT)
    values = [key(x) for x in f.all()] + [key(f"mxc:hs/{i}") for i in range(500)]
    values.append(key("t:\ud800"))  # never raises, even on what can't be UTF-8
    assert all(-(2**63) <= v < 2**63 for v in values)
    assert any(v < 0 for v in values) and any(v > 0 for v in values)
    assert len(set(values)) == len(values)
    assert key("mxc:hs/x") == key("mxc:hs/x") != key("mxc:hs/y")
    # a shingle's key is its own hash; a malformed one is hashed like anything else
    assert key("s:00000000000000ff") == 255 and key("s:ffffffffffffffff") == -1
    assert key("s:not-hex-at-all!") == key("s:not-hex-at-all!") != 0


def test_nothing_commits_on_its_own(store):
    with pytest.raises(RuntimeError):
        with store.transaction() as txn:
            record_origin(txn, store.dialect, msg(TEXT).all(), ICU, "$orig", T0)
            raise RuntimeError("the send failed")
    assert count(store, TABLE) == 0 and count(store, ORIGIN_TABLE) == 0


def test_unknown_dialect_is_refused(store):
    with store.transaction() as txn:
        with pytest.raises(ValueError, match="dialect"):
            find_foreign(txn, "mysql", msg(TEXT), (), WARD)


def test_malformed_shingle_strings_are_keyed_one_by_one(store):
    odd = ["s:NOT-HEX-AT-ALL!", "s:00000000000000ff", "s:0123", "s:0000000000000001x"]
    f = Fingerprints(shingles=frozenset(odd))
    record(store, f, ICU, "$odd")
    assert count(store, TABLE) == len(odd)
    match = find(store, f, WARD)
    assert match is not None and match.matched == set(odd)


def test_a_copy_of_the_rooms_own_event_gives_way_to_one_from_elsewhere(store):
    shingles = [f"s:{i:016x}" for i in range(10)]
    record(store, Fingerprints(shingles=frozenset(shingles[:6])), WARD, "$own")
    record(store, Fingerprints(shingles=frozenset(shingles[6:])), ICU, "$other")
    candidate = Fingerprints(shingles=frozenset(shingles))
    match = find(store, candidate, WARD)  # $own shares more, but is this room's own
    assert match is not None and match.origin_event == "$other"
    assert match.matched == set(shingles[6:])
    assert find(store, Fingerprints(shingles=frozenset(shingles[:6])), WARD) is None


def _filler(rng: random.Random, words: int) -> str:
    vocabulary = (
        "ward round bloods review plan family stable improving fluids oxygen chest sputum "
        "renal potassium insulin theatre discharge clinic referral dressing drain wound pain"
    ).split()
    return " ".join(f"{rng.choice(vocabulary)}{rng.randint(0, 99)}" for _ in range(words))


def test_a_long_message_is_decided_as_if_every_key_were_probed(store):
    """Two-phase lookups of long messages (sample, then the neighbours of its hits) decide
    exactly what the rule decides on everything the message shares."""
    rng = random.Random(8)
    report = _filler(rng, 150)
    original = msg(report)
    record(store, original, ICU, "$report")
    for _ in range(40):
        start = rng.randrange(len(report) - 100)
        paste = report[start : start + rng.randint(20, 90)]
        candidate = msg(f"{_filler(rng, 60)} {paste} {_filler(rng, 60)}")
        assert copy_decision.shingle_sample(candidate) is not None  # two phases
        expected = copy_decision.is_foreign_copy(candidate, candidate.all() & original.all())
        match = find(store, candidate, WARD)
        assert (match is not None) == expected
        if match is not None:
            assert match.origin_event == "$report" and match.matched <= original.all()


def test_a_long_copy_of_the_rooms_own_event_still_finds_one_from_elsewhere(store):
    rng = random.Random(9)
    own, other = _filler(rng, 120), _filler(rng, 30)
    record(store, msg(own), WARD, "$own")
    record(store, msg(other), ICU, "$other")
    # an exact and a reworded copy of the room's own report, with a pasted paragraph
    candidate = msg(own + " " + other[40:140])
    match = find(store, candidate, WARD)
    assert match is not None and match.origin_event == "$other"
    assert find(store, msg(own), WARD) is None
    assert find(store, msg(own), ICU).origin_event == "$own"
