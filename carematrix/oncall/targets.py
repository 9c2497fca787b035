"""Escalation targets: the strings a policy's steps name, and turning them into people.

A target is checked when the policy is loaded (``parse_target``) so a typo fails at start-up,
not at 03:00 when the step fires. The escalation state machine only ever sees a ``resolve``
callable; :func:`resolver` builds the usual one from a roster and the policy's pools.

Grammar: ``oncall`` (the current holders of the page's own role), ``role:<role id>`` (the
holders of another role), ``backup:<role id>`` (the holders of a backup rota; resolved like
``role:`` but named separately so messages to the sender say "backup"),
``staff:<staff number>`` (one named person), ``pool:<name>`` (a fixed list from the policy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from carematrix.oncall.roster import Roster

KINDS = ("oncall", "role", "backup", "staff", "pool")

Resolve = Callable[[str, datetime], tuple[str, ...]]


def parse_target(target: str) -> tuple[str, str]:
    """``(kind, argument)``; ``("oncall", "")`` for the page's own role."""
    if target == "oncall":
        return "oncall", ""
    kind, sep, argument = target.partition(":")
    if not sep or kind not in KINDS[1:] or not argument.strip():
        raise ValueError(
            f"unknown escalation target {target!r}: expected oncall, role:<role>, "
            "backup:<role>, staff:<staff number> or pool:<name>"
        )
    return kind, argument


def describe(target: str) -> str:
    """Words for the sender: they need to know who is being tried, not the policy syntax."""
    kind, argument = parse_target(target)
    return {
        "oncall": "the on-duty holder",
        "role": f"on-duty {argument}",
        "backup": f"backup {argument}",
        "staff": f"staff {argument}",
        "pool": f"the {argument} pool",
    }[kind]


def describe_zh(target: str) -> str:
    """:func:`describe` in Chinese, for the half of a notice staff read first."""
    kind, argument = parse_target(target)
    return {
        "oncall": "当班人员",
        "role": f"{argument} 的当班人员",
        "backup": f"二线 {argument}",
        "staff": f"员工 {argument}",
        "pool": f"后备人员组 {argument}",
    }[kind]


def resolver(roster: Roster, role: str, pools: Mapping[str, Sequence[str]]) -> Resolve:
    """The ``resolve`` for pages to ``role``: roles through the roster at the given instant,
    pools and named staff as written. An unknown pool resolves to nobody, which the state
    machine reports as a gap instead of failing the page."""

    def resolve(target: str, at: datetime) -> tuple[str, ...]:
        kind, argument = parse_target(target)
        if kind == "oncall":
            return roster.on_duty(role, at)
        if kind in ("role", "backup"):
            return roster.on_duty(argument, at)
        if kind == "staff":
            return (argument,)
        return tuple(dict.fromkeys(pools.get(argument, ())))

    return resolve
