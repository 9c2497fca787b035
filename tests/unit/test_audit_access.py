"""The record of a file request says what the client got (carematrix/audit/access.py)."""

from __future__ import annotations

import pytest

from carematrix.audit import actions as A
from carematrix.audit.access import (
    CONNECTION_LOST,
    NO_FILE,
    MediaRequest,
    Requester,
    actor_of,
    outcome_of,
    reason_of,
    upload_record,
)


@pytest.mark.parametrize(
    ("status", "complete", "outcome"),
    [
        (200, True, A.SUCCESS),
        (206, True, A.SUCCESS),
        (200, False, A.FAILURE),  # the client went away before it had the file
        (401, True, A.DENIED),
        (403, True, A.DENIED),
        (404, True, A.FAILURE),
        (415, True, A.FAILURE),
        (503, True, A.FAILURE),
        (307, True, A.FAILURE),
    ],
)
def test_success_is_only_a_2xx_answer_sent_whole(status: int, complete: bool, outcome: str):
    assert outcome_of(status, complete) == outcome


def test_the_reason_is_the_one_given_else_one_for_the_status():
    assert reason_of(200, True, "ignored") is None
    assert reason_of(200, False, None) == CONNECTION_LOST
    assert reason_of(415, True, "This image cannot be shown: too many pixels") == "This image cannot be shown: too many pixels"
    assert reason_of(404, True, None) == "not found"
    assert reason_of(418, True, None) == "HTTP 418"
    assert len(reason_of(500, True, "x" * 2000) or "") == 512


def test_a_request_without_a_valid_token_is_anonymous_never_none_or_empty():
    assert actor_of(None) == "anonymous"
    assert actor_of(None, "other.example") == "other.example"
    assert actor_of(Requester("@n3001:h")) == "@n3001:h"


def test_a_refused_download_is_denied_by_its_rule_for_the_person_who_asked():
    access = MediaRequest(kind="download", mxc="mxc://h/abc", source="10.0.0.7", process="main", requester=Requester("@d1001:h"))
    access.room, access.rule, access.reason = "!icu:h", "protection.media_members", "only its members can open it"
    record = access.record(403, True)
    assert (record.actor, record.action, record.object, record.outcome, record.rule, record.room) == (
        "@d1001:h", A.MEDIA_DOWNLOAD, "mxc://h/abc", A.DENIED, "protection.media_members", "!icu:h",
    )
    assert dict(record.details) == {"status": 403, "reason": "only its members can open it"}


def test_a_415_is_a_failure_and_a_thumbnail_is_its_own_action():
    access = MediaRequest(kind="thumbnail", mxc="mxc://h/big", source="10.0.0.7", process="main", requester=Requester("@d2001:h"))
    access.details["protected"] = "watermark"
    access.reason = "This image cannot be shown: The image has too many pixels to be processed safely."
    record = access.record(415, True)
    assert (record.action, record.outcome) == (A.MEDIA_THUMBNAIL, A.FAILURE)
    assert record.details["status"] == 415 and "too many pixels" in record.details["reason"]
    assert access.record(200, True).outcome == A.SUCCESS and "reason" not in access.record(200, True).details


def test_an_admin_acting_as_a_user_is_the_actor_and_the_user_is_named():
    access = MediaRequest(kind="download", mxc="mxc://h/a", source="::1", process="w1", requester=Requester("@carol:h", "@admin:h"))
    record = access.record(200, True)
    assert record.actor == "@admin:h" and record.details["as_user"] == "@carol:h"


def test_an_upload_carries_its_uri_size_and_type_and_a_refused_one_has_no_uri():
    stored = upload_record(
        requester=Requester("@n3001:h"), source="10.0.0.7", process="main", status=200, complete=True,
        mxc="mxc://h/new", size=52311, content_type="image/png",
    )
    assert (stored.action, stored.object, stored.outcome) == (A.MEDIA_UPLOAD, "mxc://h/new", A.SUCCESS)
    assert dict(stored.details) == {"status": 200, "size": 52311, "content_type": "image/png"}
    refused = upload_record(
        requester=None, source="10.0.0.9", process="main", status=401, complete=True,
        mxc=None, size=None, content_type=None, reason="Missing access token",
    )
    assert (refused.actor, refused.object, refused.outcome, refused.source) == ("anonymous", NO_FILE, A.DENIED, "10.0.0.9")
    assert refused.details["reason"] == "Missing access token"
    too_big = upload_record(
        requester=Requester("@n3001:h"), source="10.0.0.7", process="main", status=413, complete=True,
        mxc=None, size=None, content_type=None,
    )
    assert (too_big.outcome, too_big.details["reason"]) == (A.FAILURE, "file too large")
