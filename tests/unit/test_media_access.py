"""Who may open a file shared in a protected room, and in which form (the media gate)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from carematrix.hsdb.media_store import ProtectedPosting
from carematrix.rules.media import (
    ARCHIVE,
    FILES_BLOCKED,
    MEMBERS_ONLY,
    OTHER_SERVER,
    PLAIN_FILE,
    SIGN_IN,
    WATERMARK,
    decide_media_access,
)
from carematrix.rules.verdict import ALLOW


@dataclass(frozen=True)
class Posted:
    kind: str
    other_files: str = "audited"


PHOTO = [Posted("image")]
LETTER = [Posted("file")]
BLOCKED_LETTER = [Posted("file", "block")]


def member(postings, **kw):
    args = {"other_server": False, "signed_in": True, "is_system": False, "is_member": True, **kw}
    return decide_media_access(postings, **args)


def test_a_file_never_posted_in_a_protected_room_is_not_the_gates_business():
    assert member([], is_member=False, signed_in=False) == ALLOW


def test_a_member_gets_an_image_marked_for_them_and_an_outsider_nothing():
    assert member(PHOTO) == WATERMARK
    refused = member(PHOTO, is_member=False)
    assert refused == MEMBERS_ONLY and not refused.allowed
    assert refused.message().endswith("[rule protection.media_members]")
    assert "only its members can open it" in refused.message()


def test_other_files_follow_the_class_audited_or_blocked():
    assert member(LETTER) == PLAIN_FILE
    blocked = member(BLOCKED_LETTER)
    assert blocked == FILES_BLOCKED and "[rule protection.other_files]" in blocked.message()
    # Outsiders hear that they are not members, not how the room treats files.
    assert member(BLOCKED_LETTER, is_member=False) == MEMBERS_ONLY


def test_an_image_posted_anywhere_as_an_image_is_marked_even_where_files_are_blocked():
    # The same bytes as a file in a blocking room and as a photo elsewhere: the photo wins,
    # served marked (never the original).
    assert member([*BLOCKED_LETTER, Posted("image")]) == WATERMARK


def test_the_service_gets_the_original_for_the_archive_without_being_a_member():
    assert member(PHOTO, is_system=True, is_member=False) == ARCHIVE
    assert member(BLOCKED_LETTER, is_system=True, is_member=False) == ARCHIVE


@pytest.mark.parametrize("postings", [PHOTO, LETTER, BLOCKED_LETTER])
def test_no_token_or_another_server_gets_nothing_whatever_the_file(postings):
    assert member(postings, signed_in=False) == SIGN_IN
    assert "[rule protection.media_signed_in]" in SIGN_IN.message()
    assert member(postings, other_server=True, is_system=True) == OTHER_SERVER
    assert not OTHER_SERVER.allowed


def test_every_decision_names_its_rule():
    for verdict in (ARCHIVE, FILES_BLOCKED, MEMBERS_ONLY, OTHER_SERVER, PLAIN_FILE, SIGN_IN, WATERMARK):
        assert verdict.rule.startswith("protection.") and verdict.reason


def test_the_gate_decides_over_the_postings_it_stores():
    stored = [ProtectedPosting("m1", "!icu:hs", "$e", "file", "block")]
    assert member(stored) == FILES_BLOCKED
