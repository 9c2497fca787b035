r"""Quiet hours: off-duty staff are not woken by ward chatter, but critical messages and pages
still get through, even in rooms they muted themselves.

Implemented with the user's own push rules (the homeserver decides what is pushed, so this
works for every client and device). The facts of the Matrix spec this relies on (client-server
API, "Push Notifications" module: "Push Rules", "Predefined Rules", "Actions" and the
``PUT /pushrules/{scope}/{kind}/{ruleId}`` endpoint; checked against Synapse's evaluator):

* Kinds are checked in the order override, content, room, sender, underride; within a kind in
  list order; the first matching enabled rule decides and nothing after it is consulted.
* Server-default rules (``rule_id`` starting with ".") rank below the user's own rules of the
  same kind, except ``.m.rule.master``, which ranks above every other rule, user-defined ones
  included. Synapse evaluates: ``.m.rule.master``, then the user's override rules, then the
  other server-default override rules (``.m.rule.suppress_notices``, ...).
* So a user who switched on "disable all notifications" (``.m.rule.master`` enabled, actions
  ``[]``) gets nothing from us either: no user rule can rank above it, ``before``/``after``
  cannot name a server-default rule, and user rule IDs may not start with ".". We do not
  switch it off behind the user's back; :func:`master_muted` lets the appservice notice and
  warn (and escalation still moves on to someone reachable).
* A rule created without ``before``/``after`` becomes the most important user rule of its kind.
  That is where a client puts a newer room mute (an override rule, ``rule_id`` = the room ID,
  ``conditions`` ``[event_match room_id]``, ``actions`` ``[]``), i.e. above our breakthrough
  rules; :func:`needed_changes` must therefore be re-run when the user's push rules change,
  and moves ours back to the top. Synapse moves an existing rule on a ``PUT`` with ``before``
  and keeps its enabled flag, hence the separate "enable" operation.
* Silence is ``actions: []``; ``dont_notify`` is a historical action servers must ignore.
* Keys are dot-separated paths; a literal dot inside a property name is escaped with a
  backslash (spec appendix "Dot-separated property paths", MSC3873, spec v1.7), so our
  ``org.carematrix.priority`` content key is ``content.org\.carematrix\.priority``. The
  values are matched exactly with ``event_property_is`` (spec v1.7).
* Conditions of one rule must all hold, so "critical priority OR a page" takes two rules.
* The homeserver only sees ciphertext of end-to-end encrypted events: content conditions
  never match them, while the quiet rule (no conditions) does. Pages and critical notices must
  therefore carry their ``org.carematrix.*`` markers in cleartext to break through.

Each rule is a dict as returned by ``GET /pushrules/`` (``rule_id``, ``conditions``,
``actions``, ``enabled``, ``default``); operations are ``(op, rule_id, body, before)`` with op
"put" (body is the PUT request body), "delete" or "enable".
"""

from __future__ import annotations

from typing import Any

QUIET_RULE_ID = "org.carematrix.quiet_hours"
BREAKTHROUGH_RULE_ID = "org.carematrix.critical"
PAGE_RULE_ID = "org.carematrix.page"
MASTER_RULE_ID = ".m.rule.master"
MANAGED_RULE_IDS = frozenset({BREAKTHROUGH_RULE_ID, PAGE_RULE_ID, QUIET_RULE_ID})

PRIORITY_KEY = r"content.org\.carematrix\.priority"
PAGE_KEY = r"content.org\.carematrix\.page"
MENTIONED_KEY = r"content.m\.mentions.user_ids"

Rule = dict[str, Any]
Operation = tuple[str, str, Rule | None, str | None]


def _breakthrough_actions() -> list[Any]:
    return ["notify", {"set_tweak": "sound", "value": "critical"}, {"set_tweak": "highlight"}]


def quiet_rules(off_duty: bool, *, user_id: str | None = None) -> list[Rule]:
    """The managed override rules to have in place, most important first.

    The breakthrough rules are always there, so a critical message or a page also reaches an
    on-duty doctor who muted the room. With ``user_id`` the page rule also requires the user
    to be mentioned (``m.mentions``), so a page to a colleague in a shared room does not sound
    a critical alarm for every off-duty member; without it any page event breaks through.
    """
    page_conditions: list[Rule] = [{"kind": "event_property_is", "key": PAGE_KEY, "value": True}]
    if user_id is not None:
        page_conditions.append(
            {"kind": "event_property_contains", "key": MENTIONED_KEY, "value": user_id}
        )
    rules: list[Rule] = [
        {
            "kind": "override",
            "rule_id": BREAKTHROUGH_RULE_ID,
            "conditions": [{"kind": "event_property_is", "key": PRIORITY_KEY, "value": "critical"}],
            "actions": _breakthrough_actions(),
        },
        {
            "kind": "override",
            "rule_id": PAGE_RULE_ID,
            "conditions": page_conditions,
            "actions": _breakthrough_actions(),
        },
    ]
    if off_duty:
        rules.append(
            {"kind": "override", "rule_id": QUIET_RULE_ID, "conditions": [], "actions": []}
        )
    return rules


def _is_server_default(rule: Rule) -> bool:
    return bool(rule.get("default")) or str(rule.get("rule_id", "")).startswith(".")


def _normalised_actions(actions: list[Any]) -> list[Any]:
    """Compare what the server means, not how it spells it: a highlight tweak without a value
    is true, and historical actions are ignored (spec "Actions")."""
    out: list[Any] = []
    for action in actions:
        if action in ("dont_notify", "coalesce"):
            continue
        if isinstance(action, dict) and action.get("set_tweak") == "highlight":
            action = {"set_tweak": "highlight", "value": action.get("value", True)}
        out.append(action)
    return out


def _normalised_conditions(conditions: list[Rule]) -> list[Rule]:
    return [{k: v for k, v in c.items() if not k.startswith("_")} for c in conditions]


def _same_body(current: Rule, wanted: Rule) -> bool:
    return _normalised_conditions(current.get("conditions", [])) == _normalised_conditions(
        wanted["conditions"]
    ) and _normalised_actions(current.get("actions", [])) == _normalised_actions(wanted["actions"])


def needed_changes(
    current_override_rules: list[Rule], off_duty: bool, *, user_id: str | None = None
) -> list[Operation]:
    """The operations, in order, that turn the user's override rules (in evaluation order, as
    from ``GET /pushrules/``) into: our breakthrough rules first among the user's own rules,
    then the quiet rule if off duty, then the user's rules in their own order. Run on its own
    result it returns nothing, so it can be applied at every shift change and after every
    push-rule change of the user without churn.

    Only the part of our block from the first misplaced or outdated rule on is rewritten, each
    rule put ``before`` the user's first own rule, so it lands right below the part kept. The
    anchor is always a user rule: ``before``/``after`` may not name a server-default rule. The
    user's own rules are never rewritten, only ever pushed down by ours.
    """
    wanted = quiet_rules(off_duty, user_id=user_id)
    wanted_ids = [r["rule_id"] for r in wanted]
    user_rules = [r for r in current_override_rules if not _is_server_default(r)]
    by_id = {r["rule_id"]: r for r in user_rules}
    operations: list[Operation] = []

    unwanted = (MANAGED_RULE_IDS & by_id.keys()) - set(wanted_ids)
    for rule_id in sorted(unwanted):
        operations.append(("delete", rule_id, None, None))
    order = [r["rule_id"] for r in user_rules if r["rule_id"] not in unwanted]

    keep = 0  # leading rules of our block already in place, as they should be
    while (
        keep < len(wanted)
        and keep < len(order)
        and order[keep] == wanted_ids[keep]
        and _same_body(by_id[order[keep]], wanted[keep])
    ):
        keep += 1
    if keep < len(wanted):
        body = {
            r["rule_id"]: {"conditions": r["conditions"], "actions": r["actions"]} for r in wanted
        }
        theirs = [rule_id for rule_id in order[keep:] if rule_id not in wanted_ids]
        if theirs:
            # in order, each just above the user's top rule: lands right after the kept part
            for rule_id in wanted_ids[keep:]:
                operations.append(("put", rule_id, body[rule_id], theirs[0]))
        else:
            # nothing of theirs to anchor on: rebuild the block bottom-up, each on top
            for rule_id in reversed(wanted_ids):
                others = [other for other in order if other != rule_id]
                operations.append(("put", rule_id, body[rule_id], others[0] if others else None))
                order = [rule_id, *others]

    for rule_id in wanted_ids:
        if rule_id in by_id and by_id[rule_id].get("enabled", True) is False:
            operations.append(("enable", rule_id, None, None))
    return operations


def master_muted(current_override_rules: list[Rule]) -> bool:
    """Whether the user switched off all notifications (``.m.rule.master`` enabled and
    silent): nothing, not even a critical page, will be pushed to them, so the appservice
    should warn them at shift start and expect escalation to move past them."""
    for rule in current_override_rules:
        if rule.get("rule_id") == MASTER_RULE_ID:
            return bool(rule.get("enabled")) and "notify" not in rule.get("actions", [])
    return False
