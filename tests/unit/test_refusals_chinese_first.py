"""Every refusal a member of staff reads in their client is Chinese first, with the English
sentence beside it: the policy decisions are walked with representative inputs, under the demo
hospital's policy and under one whose names and labels are English only (a hospital's own YAML
may have no Chinese in it; the refusal must still open in Chinese)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

import pytest

import carematrix.rules
from carematrix.policy import load_policy
from carematrix.policy.loader import load_policy_texts
from carematrix.policy.model import Policy
from carematrix.policy.rooms import PROTECTION_EVENT, RoomClassState
from carematrix.rules import Verdict
from carematrix.rules.cases import decide_close_case, decide_open_case
from carematrix.rules.creation import decide_create
from carematrix.rules.directory import decide_publish
from carematrix.rules.display_name import decide_display_name, decide_profile_name
from carematrix.rules.media import decide_media_access
from carematrix.rules.membership import decide_membership
from carematrix.rules.oncall import decide_ack, decide_cover, decide_swap
from carematrix.rules.protection import (
    ENCRYPTION_EVENT,
    PAGE_FLAG,
    RETENTION_EVENT,
    decide_priority,
    decide_protection_state,
)
from carematrix.rules.room_class import (
    decide_class_change,
    decide_post,
    decide_state_change,
    undefined,
)
from tests.paths import DEMO_POLICY_DIR

ENGLISH_ONLY = load_policy_texts(
    [
        (
            "p.yaml",
            """\
hospital: {name: Test Hospital}
roles: {announcer: {}, scheduler: {}}
units: [{id: icu, name: ICU}, {id: ward, name: Ward 5A}]
staff:
  - {staff_number: A1, name: Ann Announcer, units: [icu], position: administrator, roles: [announcer]}
  - {staff_number: N1, name: Nina Nurse, units: [icu], position: nurse}
  - {staff_number: D1, name: Dan Doctor, units: [ward], position: doctor}
room_classes:
  notices:
    scope: unit
    post: {roles: [announcer], staff: [D1]}
    create: {roles: [announcer]}
    join_rules: [invite]
    history_visibility: [shared]
    min_power_levels: {invite: 50}
  ward:
    description: ward room
    scope: unit
    protection: {no_forward: true, watermark: true, retention: 30d}
  pair:
    max_members: 2
  service_only:
    create: {}
""",
        )
    ]
)


class _Posting:
    def __init__(self, kind: str, other_files: str) -> None:
        self.kind, self.other_files = kind, other_files


def _refusals(policy: Policy) -> Iterator[Verdict]:
    """Every refusal the rules give for representative requests under ``policy``."""
    staff = list(policy.staff)
    someone = staff[0] if staff else None
    classes = sorted(policy.room_classes.values(), key=lambda rc: rc.id)
    units = sorted(policy.units)
    for rc in classes:
        unit_room = RoomClassState(rc.id, units[0])
        yield decide_post(policy, rc.id, None, "m.room.message", False)
        yield decide_class_change(policy, rc.id, rc.id, someone, False)
        yield decide_class_change(policy, None, rc.id, None, False, None)
        for person in staff:
            yield decide_class_change(policy, None, rc.id, person, False, "no-such-unit")
            for unit in units:
                yield decide_class_change(policy, None, rc.id, person, False, unit)
                for action in ("join", "invite"):
                    yield decide_membership(policy, RoomClassState(rc.id, unit), person, False, action, 5)
        yield decide_membership(policy, RoomClassState(rc.id, "no-such-unit"), None, False, "invite")
        yield decide_membership(policy, unit_room, None, False, "join")
        for event_type, content in [
            ("m.room.join_rules", {"join_rule": "public"}),
            ("m.room.history_visibility", {"history_visibility": "world_readable"}),
            ("m.room.power_levels", {"invite": 0, "kick": 0, "ban": 0, "redact": 0, "state_default": 0}),
            (PROTECTION_EVENT, {"no_forward": False}),
            (RETENTION_EVENT, {"max_lifetime": 1}),
        ]:
            yield decide_state_change(policy, unit_room, event_type, content, False)
        yield decide_protection_state(rc, ENCRYPTION_EVENT, {"algorithm": "m.megolm.v1.aes-sha2"}, False)
        for request in (
            {"initial_state": [_class_state(rc.id, units[0])], "preset": "public_chat"},
            {"initial_state": [_class_state(rc.id, units[0]), _history("world_readable")]},
            {"initial_state": [_class_state(rc.id, units[0])], "power_level_content_override": {"invite": 0}},
        ):
            for person in staff:
                yield decide_create(policy, request, person, False, [(s, False) for s in staff]).verdict
    yield decide_create(policy, {"initial_state": []}, someone, False, []).verdict
    yield decide_create(policy, {"visibility": "public"}, someone, False, []).verdict
    yield decide_post(policy, "retired", someone, "m.room.message", False)
    yield decide_class_change(policy, None, "retired", someone, False)
    yield undefined("retired")
    yield decide_publish(False)
    yield decide_publish(False, at_creation=True)
    yield decide_display_name(policy, someone, {"membership": "join", "displayname": "nickname"})
    yield decide_profile_name(policy, someone, "nickname")
    yield decide_priority({PAGE_FLAG: True}, False)
    yield decide_priority({"org.carematrix.priority": "critical"}, False)
    for other_files in ("audited", "block"):
        posted = [_Posting("file", other_files)]
        yield decide_media_access(posted, other_server=True, signed_in=False, is_system=False, is_member=False)
        yield decide_media_access(posted, other_server=False, signed_in=False, is_system=False, is_member=False)
        yield decide_media_access(posted, other_server=False, signed_in=True, is_system=False, is_member=False)
        yield decide_media_access(posted, other_server=False, signed_in=True, is_system=False, is_member=True)
    for positions in (frozenset({"doctor", "nurse"}), frozenset()):
        yield decide_open_case(None, positions)
        yield decide_close_case("@x:h", "@y:h", None, positions)
    for overrides in (frozenset({"scheduler"}), frozenset()):
        yield decide_cover(None, "ICU – doctor on duty", ["D1"], overrides)
    yield decide_swap(None)
    yield decide_ack(None)


def _class_state(class_id: str, unit: str) -> dict:
    return {"type": "org.carematrix.room_class", "state_key": "", "content": {"class": class_id, "unit": unit}}


def _history(value: str) -> dict:
    return {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": value}}


def _constants() -> Iterator[tuple[str, Verdict]]:
    """Refusals kept as module constants in the rules and the homeserver modules."""
    names = [f"carematrix.rules.{m.name}" for m in pkgutil.iter_modules(carematrix.rules.__path__)]
    names += ["synapse_modules.policy_module", "synapse_modules.protection"]
    for module_name in names:
        module = importlib.import_module(module_name)
        for attr, value in vars(module).items():
            if isinstance(value, Verdict) and not value.allowed and value.rule:
                yield f"{module_name}.{attr}", value


def chinese_first(text: str) -> bool:
    """A CJK character comes before any Latin letter, and an English sentence follows."""
    for i, ch in enumerate(text):
        if "\u4e00" <= ch <= "\u9fff":
            return any("a" <= c.lower() <= "z" for c in text[i:])
        if "a" <= ch.lower() <= "z":
            return False
    return False


@pytest.mark.parametrize("policy", [load_policy(DEMO_POLICY_DIR), ENGLISH_ONLY], ids=["demo", "english-only"])
def test_every_refusal_of_the_rules_opens_in_chinese(policy):
    refusals = {v for v in _refusals(policy) if not v.allowed}
    rules = {v.rule for v in refusals}
    # The walk reaches the refusals it means to: a rule ID of each kind.
    for rule in ("room_class.immutable", "room_class.undefined", "room.directory",
                 "identity.real_name", "priority.reserved", "protection.state", "case.open", "case.close",
                 "oncall.cover", "oncall.swap", "oncall.ack", "protection.media_members", "protection.other_files"):
        assert rule in rules, rule
    for suffix in ("post", "create", "scope", "join_rules", "history_visibility", "power_levels"):
        assert any(r.startswith("room_class.") and r.endswith("." + suffix) for r in rules), suffix
    if policy is ENGLISH_ONLY:
        assert {"room_class.pair.max_members", "room_class.required"} <= rules  # no default class
    else:
        assert any(r.endswith(".encryption") for r in rules)
    not_chinese = sorted(v.reason for v in refusals if not chinese_first(v.reason))
    assert not_chinese == []


def test_refusal_constants_open_in_chinese_and_keep_their_rule_suffix():
    found = dict(_constants())
    assert {"carematrix.rules.directory.NOT_PUBLISHED", "synapse_modules.policy_module.FAILED_CLOSED",
            "synapse_modules.protection.NOT_RECORDED"} <= set(found)
    for name, verdict in found.items():
        assert chinese_first(verdict.reason), name
        assert verdict.message() == f"{verdict.reason} [rule {verdict.rule}]"
