"""Who may open and close a patient case room (``!case open`` / ``!case close``).

A case room gathers a patient's record and the on-duty team, and closing it files the
record in the EMR and makes the room read-only: the policy's ``clinical.cases.open``
names the positions (e.g. doctors) trusted with both; whoever opened a case may also
close it."""

from __future__ import annotations

from collections.abc import Collection

from carematrix.policy.org import Staff
from carematrix.rules.verdict import ALLOW, Verdict


def decide_open_case(person: Staff | None, open_positions: Collection[str]) -> Verdict:
    if person is not None and person.position in open_positions:
        return ALLOW
    return Verdict(
        False, "case.open",
        f"只有{_positions_zh(open_positions)}岗位的员工可以发起患者会诊。"
        f" Only {_positions(open_positions)} staff may open a patient case.",
    )


def decide_close_case(sender: str, opened_by: str, person: Staff | None, open_positions: Collection[str]) -> Verdict:
    if sender == opened_by or (person is not None and person.position in open_positions):
        return ALLOW
    return Verdict(
        False, "case.close",
        f"只有发起会诊的医生或{_positions_zh(open_positions)}岗位的员工可以结束会诊。"
        f" Only the doctor who opened the case or {_positions(open_positions)} staff may close it.",
    )


def _positions(open_positions: Collection[str]) -> str:
    return ", ".join(sorted(open_positions)) or "designated"


def _positions_zh(open_positions: Collection[str]) -> str:
    return " " + "、".join(sorted(open_positions)) + " " if open_positions else "指定"
