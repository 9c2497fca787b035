"""Quiet hours as push rules: what an off-duty doctor (and the on-call one who muted a noisy
room) would check. A small stand-in homeserver applies the operations the way Synapse does
(a PUT without ``before`` puts the rule on top of the user's rules, a PUT of an existing rule
moves it and keeps its enabled flag) and evaluates override rules in order."""

from __future__ import annotations

import copy
import fnmatch
import random
from typing import Any

from appservice.oncall.quiet_hours import (
    BREAKTHROUGH_RULE_ID,
    PAGE_RULE_ID,
    QUIET_RULE_ID,
    master_muted,
    needed_changes,
    quiet_rules,
)

ME = "@d1001:renhe.example"
MUTED = "!noisy:renhe.example"
WARD = "!ward5a:renhe.example"

MASTER = {
    "rule_id": ".m.rule.master",
    "default": True,
    "enabled": False,
    "conditions": [],
    "actions": [],
}
SERVER_BOTTOM = [
    {
        "rule_id": ".m.rule.suppress_notices",
        "default": True,
        "enabled": True,
        "conditions": [{"kind": "event_match", "key": "content.msgtype", "pattern": "m.notice"}],
        "actions": [],
    },
]


def room_mute(room_id: str) -> dict[str, Any]:
    """How clients mute a room: an override rule named after the room, with no actions."""
    return {
        "rule_id": room_id,
        "default": False,
        "enabled": True,
        "conditions": [{"kind": "event_match", "key": "room_id", "pattern": room_id}],
        "actions": [],
    }


class Homeserver:
    def __init__(self, *user_rules: dict[str, Any]) -> None:
        self.master = copy.deepcopy(MASTER)
        self.user = [copy.deepcopy(r) for r in user_rules]

    def override_rules(self) -> list[dict[str, Any]]:
        return copy.deepcopy([self.master, *self.user, *SERVER_BOTTOM])

    def _index(self, rule_id: str) -> int:
        return [r["rule_id"] for r in self.user].index(rule_id)

    def apply(self, operations: list[tuple[str, str, dict | None, str | None]]) -> None:
        for op, rule_id, body, before in operations:
            if op == "put":
                assert body is not None and not rule_id.startswith(".")
                enabled = True
                if rule_id in [r["rule_id"] for r in self.user]:
                    enabled = self.user.pop(self._index(rule_id))["enabled"]
                rule = {"rule_id": rule_id, "default": False, "enabled": enabled, **body}
                self.user.insert(0 if before is None else self._index(before), rule)
            elif op == "delete":
                self.user.pop(self._index(rule_id))
            elif op in ("enable", "disable"):
                self.user[self._index(rule_id)]["enabled"] = op == "enable"
            else:
                raise AssertionError(op)

    def sync(self, off_duty: bool, **kwargs: Any) -> list:
        operations = needed_changes(self.override_rules(), off_duty, **kwargs)
        self.apply(operations)
        return operations

    def user_rule_ids(self) -> list[str]:
        return [r["rule_id"] for r in self.user]

    def push(self, event: dict[str, Any]) -> list[Any]:
        """The actions for ``event``; [] means no notification. Messages nobody's rule
        matched fall through to the server default ``.m.rule.message`` (notify)."""
        for rule in self.override_rules():
            if rule["enabled"] and all(_matches(c, event) for c in rule["conditions"]):
                return rule["actions"]
        return ["notify"]


def _path(key: str) -> list[str]:
    """Split a dot-separated property path; backslash escapes a literal dot or backslash."""
    parts, current, chars = [], "", iter(key)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            current += nxt if nxt in (".", "\\") else ch + nxt
        elif ch == ".":
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def _value(event: dict[str, Any], key: str) -> Any:
    value: Any = event
    for part in _path(key):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _matches(condition: dict[str, Any], event: dict[str, Any]) -> bool:
    value = _value(event, condition["key"])
    if condition["kind"] == "event_match":
        return isinstance(value, str) and fnmatch.fnmatch(
            value.lower(), condition["pattern"].lower()
        )
    if condition["kind"] == "event_property_is":
        return type(value) is type(condition["value"]) and value == condition["value"]
    if condition["kind"] == "event_property_contains":
        return isinstance(value, list) and condition["value"] in value
    return False


def message(room_id: str, **content: Any) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "room_id": room_id,
        "sender": "@n1:renhe.example",
        "content": {"msgtype": "m.text", "body": "…", **content},
    }


CRITICAL = {"org.carematrix.priority": "critical"}
PAGE = {"org.carematrix.page": True, "m.mentions": {"user_ids": [ME]}}


def test_rules_use_escaped_keys_and_empty_actions_for_silence():
    rules = {r["rule_id"]: r for r in quiet_rules(off_duty=True)}
    assert list(rules) == [BREAKTHROUGH_RULE_ID, PAGE_RULE_ID, QUIET_RULE_ID]
    assert all(r["kind"] == "override" and not r["rule_id"].startswith(".") for r in rules.values())
    assert rules[QUIET_RULE_ID]["conditions"] == [] and rules[QUIET_RULE_ID]["actions"] == []
    assert rules[BREAKTHROUGH_RULE_ID]["conditions"] == [
        {
            "kind": "event_property_is",
            "key": r"content.org\.carematrix\.priority",
            "value": "critical",
        }
    ]
    assert rules[PAGE_RULE_ID]["conditions"][0]["key"] == "content.org\\.carematrix\\.page"
    assert rules[BREAKTHROUGH_RULE_ID]["actions"] == [
        "notify",
        {"set_tweak": "sound", "value": "critical"},
        {"set_tweak": "highlight"},
    ]
    assert [r["rule_id"] for r in quiet_rules(off_duty=False)] == [
        BREAKTHROUGH_RULE_ID,
        PAGE_RULE_ID,
    ]


def test_off_duty_silences_everything_but_critical_messages_and_pages_even_in_a_muted_room():
    server = Homeserver(room_mute(MUTED))
    assert server.sync(off_duty=True)
    assert server.user_rule_ids() == [BREAKTHROUGH_RULE_ID, PAGE_RULE_ID, QUIET_RULE_ID, MUTED]
    assert server.push(message(WARD)) == []
    assert server.push(message(MUTED)) == []
    assert "notify" in server.push(message(MUTED, **CRITICAL))
    assert {"set_tweak": "sound", "value": "critical"} in server.push(message(WARD, **CRITICAL))
    assert "notify" in server.push(message(WARD, **PAGE))
    assert server.push(message(WARD, **{"org.carematrix.priority": "urgent"})) == []
    assert server.push(message(WARD, **{"org.carematrix.page": "true"})) == []  # exact value
    # without the escaping a nested {"org": {"carematrix": ...}} would match instead: it must not
    assert server.push(message(WARD, org={"carematrix": {"priority": "critical"}})) == []


def test_rerunning_on_the_result_changes_nothing():
    server = Homeserver(room_mute(MUTED))
    server.sync(off_duty=True)
    assert needed_changes(server.override_rules(), off_duty=True) == []
    server.sync(off_duty=False)
    assert needed_changes(server.override_rules(), off_duty=False) == []


def test_on_duty_normal_messages_notify_and_the_critical_rule_beats_the_users_room_mute():
    server = Homeserver(room_mute(MUTED))
    server.sync(off_duty=False)
    assert server.user_rule_ids() == [BREAKTHROUGH_RULE_ID, PAGE_RULE_ID, MUTED]
    assert server.push(message(WARD)) == ["notify"]
    assert server.push(message(MUTED)) == []
    assert "notify" in server.push(message(MUTED, **CRITICAL))


def test_a_room_muted_later_lands_on_top_and_the_critical_rule_is_moved_back_above_it():
    server = Homeserver(room_mute(MUTED))
    server.sync(off_duty=True)
    server.apply([("put", WARD, {k: room_mute(WARD)[k] for k in ("conditions", "actions")}, None)])
    assert server.user_rule_ids()[0] == WARD
    assert server.push(message(WARD, **CRITICAL)) == []  # the mute swallowed it

    operations = server.sync(off_duty=True)
    assert {op for op, *_ in operations} == {"put"}
    assert all(before is not None and not before.startswith(".") for *_, before in operations)
    assert server.user_rule_ids() == [
        BREAKTHROUGH_RULE_ID,
        PAGE_RULE_ID,
        QUIET_RULE_ID,
        WARD,
        MUTED,
    ]
    assert "notify" in server.push(message(WARD, **CRITICAL))
    assert needed_changes(server.override_rules(), off_duty=True) == []


def test_coming_on_duty_removes_only_the_quiet_rule():
    server = Homeserver(room_mute(MUTED))
    server.sync(off_duty=True)
    assert server.sync(off_duty=False) == [("delete", QUIET_RULE_ID, None, None)]
    assert server.user_rule_ids() == [BREAKTHROUGH_RULE_ID, PAGE_RULE_ID, MUTED]
    assert server.sync(off_duty=True) == [
        ("put", QUIET_RULE_ID, {"conditions": [], "actions": []}, MUTED)
    ]
    assert server.user_rule_ids() == [BREAKTHROUGH_RULE_ID, PAGE_RULE_ID, QUIET_RULE_ID, MUTED]


def test_a_user_with_no_rules_of_their_own_gets_the_block_on_top():
    server = Homeserver()
    operations = server.sync(off_duty=True)
    assert operations[0][3] is None  # nothing to anchor on yet
    assert server.user_rule_ids() == [BREAKTHROUGH_RULE_ID, PAGE_RULE_ID, QUIET_RULE_ID]
    assert needed_changes(server.override_rules(), off_duty=True) == []


def test_a_disabled_breakthrough_rule_is_enabled_again():
    server = Homeserver(room_mute(MUTED))
    server.sync(off_duty=True)
    server.apply([("disable", BREAKTHROUGH_RULE_ID, None, None)])
    assert server.sync(off_duty=True) == [("enable", BREAKTHROUGH_RULE_ID, None, None)]
    assert needed_changes(server.override_rules(), off_duty=True) == []


def test_an_outdated_rule_body_is_rewritten_but_the_servers_spelling_is_not_churn():
    server = Homeserver(room_mute(MUTED))
    server.sync(off_duty=True)
    # as a server may return it: explicit highlight value, historical dont_notify
    server.user[0]["actions"][2] = {"set_tweak": "highlight", "value": True}
    server.user[2]["actions"] = ["dont_notify"]
    assert needed_changes(server.override_rules(), off_duty=True) == []
    server.user[0]["actions"] = ["notify"]  # an older version of our rule
    assert [op[:2] for op in server.sync(off_duty=True)] == [
        ("put", BREAKTHROUGH_RULE_ID),
        ("put", PAGE_RULE_ID),
        ("put", QUIET_RULE_ID),
    ]
    assert server.user_rule_ids() == [BREAKTHROUGH_RULE_ID, PAGE_RULE_ID, QUIET_RULE_ID, MUTED]
    assert needed_changes(server.override_rules(), off_duty=True) == []


def test_a_page_to_a_colleague_does_not_wake_me_when_the_rule_knows_who_i_am():
    server = Homeserver()
    server.sync(off_duty=True, user_id=ME)
    assert "notify" in server.push(message(WARD, **PAGE))
    colleague = {"org.carematrix.page": True, "m.mentions": {"user_ids": ["@d1002:renhe.example"]}}
    assert server.push(message(WARD, **colleague)) == []
    assert needed_changes(server.override_rules(), off_duty=True, user_id=ME) == []


def test_disable_all_notifications_beats_everything_even_critical():
    server = Homeserver(room_mute(MUTED))
    server.sync(off_duty=False)
    assert not master_muted(server.override_rules())
    server.master["enabled"] = True
    assert master_muted(server.override_rules())
    assert server.push(message(WARD, **CRITICAL)) == []
    # and we leave the user's choice alone
    assert needed_changes(server.override_rules(), off_duty=False) == []


def test_any_starting_point_ends_in_the_same_place_and_stays_there():
    rng = random.Random(7)
    ours = {r["rule_id"]: r for r in quiet_rules(off_duty=True)}
    for _ in range(300):
        rules = [room_mute(f"!r{i}:renhe.example") for i in range(rng.randint(0, 3))]
        for rule_id in rng.sample(sorted(ours), rng.randint(0, 3)):
            rule = {**copy.deepcopy(ours[rule_id]), "default": False}
            rule["enabled"] = rng.random() > 0.3
            if rng.random() < 0.3:
                rule["actions"] = ["notify"]
            rules.insert(rng.randint(0, len(rules)), rule)
        server = Homeserver(*rules)
        theirs = [r for r in server.user_rule_ids() if r not in ours]
        off_duty = rng.random() < 0.5
        server.sync(off_duty=off_duty)
        expected = [r["rule_id"] for r in quiet_rules(off_duty)]
        assert server.user_rule_ids() == expected + theirs
        assert all(r["enabled"] for r in server.user)
        assert needed_changes(server.override_rules(), off_duty=off_duty) == []
