"""!call's pure decisions and the push gateway's deployment values."""

from __future__ import annotations

from pathlib import Path

import pytest

from carematrix.calls import CallTarget, call_target, room_carries_call
from carematrix.policy import load_policy
from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.push import homeserver_values, notify_url
from carematrix_ops.deploy.settings import Settings
from tests.paths import DEMO_POLICY_DIR

POLICY = load_policy(DEMO_POLICY_DIR)


@pytest.mark.parametrize(("given", "target"), [
    ("icu/doctor", CallTarget("icu/doctor", None)),
    ("role-icu-doctor", CallTarget("icu/doctor", None)),
    ("@role-icu-doctor:localhost", CallTarget("icu/doctor", None)),
    ("D2001", CallTarget(None, "D2001")),
    ("d2001", CallTarget(None, "D2001")),
    ("@d2001:localhost", CallTarget(None, "D2001")),
    # As staff type them: a role's name in Chinese (spaced or not), an ID in capitals, a name.
    ("重症医学科值班医生", CallTarget("icu/doctor", None)),
    ("重症医学科 · 值班医生", CallTarget("icu/doctor", None)),
    ("ICU/doctor", CallTarget("icu/doctor", None)),
    ("ｉｃｕ／ｄｏｃｔｏｒ", CallTarget("icu/doctor", None)),
    ("陈静", CallTarget(None, "D2001")),
    ("Chen Jing", CallTarget(None, "D2001")),
])
def test_call_targets_are_roles_or_staff(given, target):
    assert call_target(POLICY, given, "localhost") == target


def test_an_unknown_target_says_what_is_known():
    answer = call_target(POLICY, "pharmacy/nobody", "localhost")
    assert isinstance(answer, str) and "icu/doctor" in answer
    assert isinstance(call_target(POLICY, "@d2001:elsewhere", "localhost"), str)


def test_a_name_that_fits_several_roles_names_them_and_picks_none():
    answer = call_target(POLICY, "医生", "localhost")
    assert isinstance(answer, str) and answer.index("医生") < answer.index("fits more than one")
    assert "icu/doctor" in answer and "cardiology/attending" in answer and "cardiology/backup" in answer


def test_only_a_room_of_the_two_carries_a_call():
    a, b = "@n3001:x", "@d2001:x"
    assert room_carries_call({a: "join", b: "join"}, a, b)
    assert room_carries_call({a: "join", b: "invite", "@bot:x": "leave"}, a, b)
    assert not room_carries_call({a: "join", b: "leave"}, a, b)  # the callee left
    assert not room_carries_call({a: "leave", b: "join"}, a, b)
    assert not room_carries_call({a: "join", b: "join", "@n3002:x": "join"}, a, b)


def test_the_gateway_is_the_one_private_address_synapse_may_push_to(tmp_path: Path):
    values = homeserver_values(Settings(data_dir=tmp_path, push_gateway="http://10.20.0.5:5000/_matrix/push/v1/notify"))
    assert values == {"ip_range_whitelist": ["10.20.0.5/32"], "push": {"include_content": False}}
    assert homeserver_values(Settings(data_dir=tmp_path))["ip_range_whitelist"] == []
    assert notify_url("http://10.20.0.5:5000") == "http://10.20.0.5:5000/_matrix/push/v1/notify"


@pytest.mark.parametrize("url", ["ftp://10.0.0.1/x", "http://10.0.0.1/other/path", "http://no-such-host.invalid/"])
def test_a_gateway_url_that_cannot_work_is_refused(tmp_path: Path, url: str):
    with pytest.raises(DeployError):
        homeserver_values(Settings(data_dir=tmp_path, push_gateway=url))


def test_a_notification_leaves_without_room_name_sender_name_or_text():
    from carematrix.rules.push import gateway_notification

    built = {  # as Synapse builds it for a pusher without event_id_only
        "id": "$e", "event_id": "$e", "room_id": "!r:h", "type": "m.room.message", "sender": "@n3001:h",
        "prio": "high", "counts": {"unread": 2}, "sender_display_name": "刘洋 Liu Yang",
        "room_name": "王建国 3床 会诊", "content": {"body": "患者王建国血钾7.2"}, "room_topic": "new in a later Synapse",
    }
    assert gateway_notification(built) == {
        "id": "$e", "event_id": "$e", "room_id": "!r:h", "type": "m.room.message", "sender": "@n3001:h",
        "prio": "high", "counts": {"unread": 2},
    }
    invite = {"event_id": "$i", "room_id": "!r:h", "type": "m.room.member", "membership": "invite", "user_is_target": True}
    assert gateway_notification(invite) == invite
