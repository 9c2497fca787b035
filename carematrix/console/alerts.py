"""The alerts page's rows: each page (a critical result's or one staff sent) with its patient,
age, escalation step and the time of the next step, and who has seen or acknowledged it.
Pure: the appservice hands in its pages, their clinical links and seen receipts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from carematrix.oncall.escalation import EscalationPolicy, Page

STATE_WORDS = {
    "open": "未确认 Open",
    "acked": "已确认 Acknowledged",
    "exhausted": "升级已尽 Escalation exhausted",
}


def describe_target(target: str | None, role_names: dict[str, str], name: Callable[[str], str]) -> str | None:
    """An escalation target as staff read it: the role's name, a pool, a person."""
    if target is None:
        return None
    kind, _, rest = target.partition(":")
    if kind in ("role", "backup"):
        return role_names.get(rest, rest)
    if kind == "pool":
        return f"人员池 pool {rest}"
    if kind == "staff":
        return name(rest)
    if kind == "oncall":
        return "当班者 whoever is on duty"
    return target


def alert_row(
    page: Page,
    clinical: dict[str, Any] | None,
    seen: Sequence[tuple[str, datetime]],
    escalation: EscalationPolicy | None,
    now: datetime,
    timezone: str,
    name: Callable[[str], str],
    role_names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One page as the console shows it; times in the hospital's zone."""
    tz = ZoneInfo(timezone)
    steps = len(escalation.steps) if escalation is not None else 0
    next_target = None
    # Whom the current step waits on: after a hand-over, the person it was handed to.
    waiting_on = None
    if page.state == "open" and escalation is not None and page.step < steps:
        waiting_on = escalation.steps[page.step].target
    if page.state == "open" and escalation is not None:
        if page.step + 1 < steps:
            next_target = escalation.steps[page.step + 1].target
        else:
            next_target = escalation.fallback
    patient = None
    if clinical is not None:
        patient = {
            "id": clinical.get("patient_id"), "name": clinical.get("name"),
            "ward": clinical.get("ward"), "bed": clinical.get("bed"),
        }
    return {
        "alert_id": page.alert_id,
        "kind": "critical_result" if clinical is not None else "page",
        "role": page.role, "role_name": page.role_name or page.role,
        "priority": page.priority, "state": page.state, "state_words": STATE_WORDS.get(page.state, page.state),
        "subject": page.subject,
        "patient": patient,
        "opened_at": page.created_at.astimezone(tz).isoformat(),
        "age_minutes": max(0, int((now - page.created_at).total_seconds() // 60)),
        "step": page.step + 1, "steps": steps,
        "next_step_at": page.step_deadline.astimezone(tz).isoformat() if page.state == "open" and page.step_deadline else None,
        "next_target": describe_target(next_target, role_names or {}, name),
        "waiting_on": describe_target(waiting_on, role_names or {}, name),
        "paged": [name(s) for s in page.paged],
        "seen_by": [{"by": name(s), "at": at.astimezone(tz).isoformat()} for s, at in seen],
        "acknowledged_by": name(page.acked_by) if page.acked_by else None,
        "acknowledged_at": page.acked_at.astimezone(tz).isoformat() if page.acked_at else None,
        "source": {"facility": clinical.get("facility"), "control_id": clinical.get("control_id")} if clinical else None,
    }
