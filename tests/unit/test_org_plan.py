"""Org sync planning: the diff between the policy and the homeserver, as a user reads it."""

from __future__ import annotations

from carematrix.org.plan import Observed, ObservedUser, desired_state, plan
from carematrix.policy import load_policy
from tests.paths import DEMO_POLICY_DIR

POLICY = load_policy(DEMO_POLICY_DIR)
DESIRED = desired_state(POLICY)


def synced() -> Observed:
    """A homeserver that already matches the policy."""
    return Observed(
        users={lp: ObservedUser(name, False) for lp, name in DESIRED.accounts.items()},
        managed=set(DESIRED.accounts),
        rooms={r.alias: set(r.members) for r in DESIRED.rooms},
    )


def test_every_unit_gets_a_space_nested_like_the_tree():
    spaces = {r.alias: r for r in DESIRED.rooms if r.is_space}
    assert set(spaces) == set(POLICY.units)
    assert spaces["cardiology-ward-5a"].parent_alias == "cardiology"
    assert spaces["renhe"].parent_alias is None
    order = [r.alias for r in DESIRED.rooms]
    assert order.index("cardiology") < order.index("cardiology-ward-5a")


def test_unit_rooms_hold_the_unit_subtree_and_hospital_rooms_hold_everyone():
    rooms = {r.alias: r for r in DESIRED.rooms}
    assert rooms["cardiology-team"].members == {"d1001", "d1002", "n3002"}  # ward 5A is below cardiology
    assert rooms["cardiology-ward-5a-team"].members == {"n3002"}
    assert rooms["announcements"].members == set(DESIRED.accounts)


def test_from_scratch_everything_is_created_then_joined():
    actions = plan(DESIRED, Observed())
    kinds = [a.kind for a in actions]
    assert kinds.count("create_account") == len(POLICY.staff)
    assert kinds.index("create_room") > kinds.index("create_account")
    assert kinds.index("join") > max(i for i, k in enumerate(kinds) if k == "create_room")


def test_new_rooms_are_populated_then_locked_to_invite_unless_open_to_the_whole_hospital():
    actions = plan(DESIRED, Observed())
    kinds = [a.kind for a in actions]
    locked = [a.target for a in actions if a.kind == "lock"]
    assert locked == [r.alias for r in DESIRED.rooms if r.alias not in ("renhe", "announcements")]
    assert kinds.index("lock") > max(i for i, k in enumerate(kinds) if k in ("join", "kick"))
    assert "~ #icu-team join rule -> invite" in [a.describe() for a in actions]
    rooms = {r.alias: r for r in DESIRED.rooms}
    assert rooms["renhe"].open_to_all and rooms["announcements"].open_to_all
    assert not rooms["icu"].open_to_all and not rooms["cardiology-notices"].open_to_all


def test_a_hospital_wide_room_is_never_locked():
    observed = synced()
    observed.join_rules = {r.alias: "public" if r.open_to_all else "invite" for r in DESIRED.rooms}
    assert plan(DESIRED, observed) == []


def test_a_room_left_public_by_an_interrupted_sync_is_locked_and_only_that_one():
    observed = synced()
    observed.join_rules = {r.alias: "invite" for r in DESIRED.rooms}
    observed.join_rules["icu-team"] = "public"
    assert [a.describe() for a in plan(DESIRED, observed)] == ["~ #icu-team join rule -> invite"]


def test_in_sync_means_nothing_to_do():
    assert plan(DESIRED, synced()) == []


def test_transfer_moves_rooms_and_name():
    moved = load_policy(DEMO_POLICY_DIR)
    nurse = moved.staff_for_localpart("n3002")
    observed = synced()
    from dataclasses import replace

    staff = tuple(replace(s, units=("icu",)) if s is nurse else s for s in moved.staff)
    new = desired_state(replace(moved, staff=staff, _by_localpart={}, _subtrees={}))
    described = [a.describe() for a in plan(new, observed)]
    assert "+ @n3002 joins #icu-team" in described
    assert "- @n3002 leaves #cardiology-ward-5a-team (no longer in scope)" in described
    assert "- @n3002 leaves #cardiology-team (no longer in scope)" in described
    assert any(d.startswith("~ account @n3002 display name -> 赵敏 Zhao Min · 重症医学科") for d in described)


def test_removed_staff_are_deactivated_not_kicked_and_strangers_are_left_alone():
    observed = synced()
    observed.users["p9999"] = ObservedUser("Former pharmacist", False)
    observed.managed.add("p9999")
    observed.users["it-admin"] = ObservedUser("IT", False)  # never managed by org sync
    observed.rooms["announcements"].add("p9999")
    described = [a.describe() for a in plan(DESIRED, observed)]
    assert described == ["- account @p9999 deactivated (no longer in the org)"]


def test_returning_staff_are_reactivated():
    observed = synced()
    observed.users["p5001"] = ObservedUser(DESIRED.accounts["p5001"], True)
    described = [a.describe() for a in plan(DESIRED, observed)]
    assert described[0].startswith("+ account @p5001 reactivated")
