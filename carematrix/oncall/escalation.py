"""A page to an on-duty role and its escalation, as a pure state machine.

The appservice owns the clock, the database and Matrix; this module only decides. Each
function takes the page as it was persisted plus the current time and returns the next page
state with the actions to carry out. The caller persists the new page and queues the actions
in one transaction, so a crash either did both or neither, and a restarted appservice simply
calls :func:`due` and :func:`on_deadline` again.

Decisions worth knowing:

* Never silent. A step that resolves to nobody (a roster gap) is reported to the sender at
  ``critical`` priority and as a ``gap`` action for the roster office, and the policy's
  fallback is paged at once in the step's place, on the step's timeout. If the fallback is
  empty too, the sender is told nobody could be reached at that step and the next step is tried
  immediately; when no step is left the page is exhausted and the sender is told.
* Idempotent. A deadline fires only when ``now >= step_deadline`` and the returned page carries
  the next deadline, so calling :func:`on_deadline` twice (two workers, a retry after a crash
  before the actions were sent) pages once. Timeouts must be positive for the same reason.
* Late resumption. After downtime the next step's deadline counts from ``now``, when the step
  actually fires, never from the missed deadline (which is at or before ``now``): the person
  paged after an outage still gets their full timeout instead of being skipped at once, and
  missed steps are walked one per deadline rather than all paged in a burst.
* Acknowledgement counts only from someone who was paged (a bystander's reaction must not
  stop the escalation) and only by a method the policy allows. A late acknowledgement of an
  exhausted page is still accepted: the sender wants that news more than ever.
* A read receipt shows a page was *seen*; it never acknowledges a critical page (a glance at
  a phone in a pocket is not "I am on it"), only routine and urgent ones where the policy
  allows ``read``.
* Every page names what it is about (its ``subject``) and carries a short alert ID, so two
  pages to one nurse are never mistaken for each other and ``!ack <id>`` names exactly one.
* A page may have a ``lead``: someone paged before the role's own chain (the doctor who
  ordered a test, when no ward is known for the patient). :func:`plan` puts the lead in front
  of the role's steps; every call for that page must use the same plan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from carematrix.oncall.targets import Resolve, describe, describe_zh, parse_target

PRIORITIES = ("routine", "urgent", "critical")
ACK_METHODS = frozenset({"reply", "reaction", "read"})
OPEN, ACKED, EXHAUSTED = "open", "acked", "exhausted"


@dataclass(frozen=True)
class Step:
    """One rung of the chain: page ``target`` and wait ``timeout_seconds`` for an ack."""

    target: str  # "oncall", "backup:<role>", "role:<role>", "staff:<number>", "pool:<name>"
    timeout_seconds: int
    priority: str = "urgent"  # "routine" | "urgent" | "critical"

    def __post_init__(self) -> None:
        parse_target(self.target)
        if self.timeout_seconds <= 0:
            raise ValueError(f"step {self.target}: timeout must be positive")
        if self.priority not in PRIORITIES:
            raise ValueError(f"step {self.target}: priority must be one of {PRIORITIES}")


@dataclass(frozen=True)
class EscalationPolicy:
    steps: tuple[Step, ...]  # step 0 is normally "oncall"
    fallback: str | None  # paged at once when a step resolves to nobody (a roster gap)
    ack_by: frozenset[str]  # subset of {"reply", "reaction", "read"}

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("an escalation policy needs at least one step")
        if self.fallback is not None:
            parse_target(self.fallback)
        if not self.ack_by or not self.ack_by <= ACK_METHODS:
            raise ValueError(f"ack_by must be a non-empty subset of {sorted(ACK_METHODS)}")


@dataclass(frozen=True)
class Page:
    page_id: str
    role: str
    sender: str  # staff number or Matrix user ID
    room_id: str
    event_id: str
    created_at: datetime
    step: int
    step_deadline: datetime | None
    paged: tuple[str, ...]  # staff numbers paged so far, in order, each once
    acked_by: str | None
    acked_at: datetime | None
    state: str  # "open" | "acked" | "exhausted"
    priority: str = "urgent"  # of what was paged: a critical page is never acknowledged by reading
    subject: str = ""  # what the page is about: patient, bed, result; or the sender's message
    lead: str | None = None  # a target paged before the role's own steps (see plan)
    role_name: str = ""  # the role as staff know it, for the page text

    @property
    def alert_id(self) -> str:
        return alert_id(self.page_id)


def alert_id(page_id: str) -> str:
    """Six characters staff can type (``!ack 3F9A1C``); derived, so nothing extra is stored."""
    return hashlib.sha256(page_id.encode()).hexdigest()[:6].upper()


def plan(policy: EscalationPolicy, lead: str | None, lead_timeout_seconds: int) -> EscalationPolicy:
    """The chain a page with a ``lead`` walks: the lead first, then the role's own steps."""
    if lead is None:
        return policy
    first = Step(lead, lead_timeout_seconds, "critical")
    return EscalationPolicy((first, *policy.steps), policy.fallback, policy.ack_by)


@dataclass(frozen=True)
class Action:
    """What the caller must do. ``page``: bring ``staff`` in / notify them. ``tell_sender``:
    a notice to the page's sender. ``acked``: one notice to the sender and to ``staff``, the
    others who were paged, whose alert is over. ``handed_over``: one notice to the sender and to
    ``staff``, those paged before a hand-over. ``gap``: a roster gap to report/audit."""

    kind: str  # "page" | "tell_sender" | "acked" | "handed_over" | "gap" ("stop" in outboxes of older releases)
    staff: tuple[str, ...] = ()
    step: int = 0
    priority: str = "urgent"
    message: str = ""


def _aware(now: datetime) -> None:
    if now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")


def _names(staff: Iterable[str]) -> str:
    return ", ".join(staff)


def _minutes(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


def _minutes_zh(seconds: int) -> str:
    return f"{seconds // 60} 分钟" if seconds % 60 == 0 else f"{seconds} 秒"


def _nobody(role: str, i: int, target: str) -> str:
    if target == "oncall":
        return f"Nobody is on duty for {role}"
    return f"Nobody is reachable as {describe(target)} (step {i + 1} for {role})"


def _nobody_zh(role: str, i: int, target: str) -> str:
    if target == "oncall":
        return f"当前无人值班：{role}"
    return f"无法联系{describe_zh(target)}（{role} 的第 {i + 1} 步）"


# How a page was acknowledged, in the Chinese half of the notice.
HOW_ZH = {"reply": "回复", "reaction": "表情回应", "read": "已读", "command": "!ack 指令"}


def _fire(
    page: Page, first: int, now: datetime, policy: EscalationPolicy, resolve: Resolve
) -> tuple[Page, list[Action]]:
    """Page the first step from ``first`` on that reaches anyone (through the fallback if the
    step itself is a gap); exhaust the page if none does."""
    actions: list[Action] = []
    for i in range(first, len(policy.steps)):
        step = policy.steps[i]
        # said once, before the first thing this call tells the sender, when a deadline fired
        waited = waited_zh = ""
        if i == first > 0:
            waited = f"No acknowledgement within {_minutes(policy.steps[i - 1].timeout_seconds)}. "
            waited_zh = f"{_minutes_zh(policy.steps[i - 1].timeout_seconds)}内无人确认。"
        staff = tuple(dict.fromkeys(resolve(step.target, now)))
        if staff:
            note = (
                f"Paging {describe(step.target)} for {page.role} (step {i + 1}): {_names(staff)}."
            )
            note_zh = f"正在呼叫 {page.role} 的{describe_zh(step.target)}（第 {i + 1} 步）：{_names(staff)}。"
            tell = Action("tell_sender", staff, i, "routine", f"{waited_zh}{note_zh} {waited}{note}")
        else:
            nobody = _nobody(page.role, i, step.target)
            nobody_zh = _nobody_zh(page.role, i, step.target)
            when = now.strftime("%Y-%m-%d %H:%M %Z").strip()
            actions.append(Action("gap", (), i, step.priority, f"Roster gap at {when}: {nobody}."))
            fallback = describe(policy.fallback) if policy.fallback else ""
            fallback_zh = describe_zh(policy.fallback) if policy.fallback else ""
            staff = tuple(dict.fromkeys(resolve(policy.fallback, now))) if policy.fallback else ()
            if not staff:
                why = (
                    f"the fallback ({fallback}) is empty too"
                    if fallback
                    else "there is no fallback"
                )
                why_zh = f"后备（{fallback_zh}）也无人" if fallback else "且未设后备"
                rest = f" Trying step {i + 2}." if i + 1 < len(policy.steps) else ""
                rest_zh = f"正在尝试第 {i + 2} 步。" if i + 1 < len(policy.steps) else ""
                message_zh = f"{waited_zh}{nobody_zh}，{why_zh}：此步无人可联系。{rest_zh}"
                message = f"{waited}{nobody}, and {why}: nobody could be reached at this step."
                actions.append(Action("tell_sender", (), i, "critical", f"{message_zh} {message}{rest}"))
                continue
            message_zh = f"{waited_zh}{nobody_zh}；正在呼叫后备（{fallback_zh}）：{_names(staff)}。"
            message = f"{waited}{nobody}; paging the fallback ({fallback}): {_names(staff)}."
            tell = Action("tell_sender", staff, i, "critical", f"{message_zh} {message}")
        actions.append(Action("page", staff, i, _stronger(step.priority, page.priority), page_text(page)))
        actions.append(tell)
        paged = tuple(dict.fromkeys((*page.paged, *staff)))
        base = max(now, page.step_deadline) if page.step_deadline else now
        # In UTC: aware arithmetic in a local zone adds wall-clock time, so a step across the
        # night clocks go back would wait an hour longer than its timeout.
        deadline = base.astimezone(UTC) + timedelta(seconds=step.timeout_seconds)
        new = replace(page, step=i, step_deadline=deadline, paged=paged, state=OPEN)
        return new, actions
    if page.paged:
        message = (
            f"所有升级步骤均无人确认（{page.role}，已呼叫：{_names(page.paged)}）。"
            "升级已结束：请用其他方式联系（电话、总机）。 "
            f"No acknowledgement for {page.role} after every escalation step "
            f"(paged: {_names(page.paged)}). Escalation has ended: reach them another way "
            "(phone, switchboard)."
        )
    else:
        message = (
            f"无人可联系（{page.role}）：没有任何升级步骤或后备能联系到人。请使用电话或总机。 "
            f"Nobody could be reached for {page.role}: no escalation step and no fallback "
            "reaches anyone. Use the phone or the switchboard."
        )
    actions.append(Action("tell_sender", (), len(policy.steps) - 1, "critical", message))
    last = len(policy.steps) - 1
    return replace(page, step=last, step_deadline=None, state=EXHAUSTED), actions


def _stronger(a: str, b: str) -> str:
    return max(a, b, key=PRIORITIES.index)


def page_text(page: Page) -> str:
    """The page as the person paged reads it: what, about whom, and how to acknowledge it.
    Chinese first: the head is labelled like the product's other headings (危急呼叫 CRITICAL
    PAGE), the subject said once."""
    head = "危急呼叫 CRITICAL PAGE" if page.priority == "critical" else "呼叫 Page"
    about = f": {page.subject}" if page.subject else ""
    return (
        f"{head} [{page.alert_id}] for {page.role_name or page.role}{about}\n"
        f"确认此呼叫：回复或回应本消息，或发送 !ack {page.alert_id}"
        f" Acknowledge this page: reply to it, react to it, or send !ack {page.alert_id}"
    )


def open_page(
    page_id: str,
    role: str,
    sender: str,
    room_id: str,
    event_id: str,
    now: datetime,
    policy: EscalationPolicy,
    resolve: Resolve,
    *,
    priority: str = "urgent",
    subject: str = "",
    lead: str | None = None,
    role_name: str = "",
) -> tuple[Page, list[Action]]:
    """A new page to ``role``: step 0 fires at once. ``resolve(target, at)`` gives the staff
    numbers for a target; the caller builds it per role (see ``targets.resolver``). With a
    ``lead``, ``policy`` must already be the :func:`plan` for it."""
    _aware(now)
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}")
    page = Page(
        page_id, role, sender, room_id, event_id, now, 0, None, (), None, None, OPEN,
        priority, subject, lead, role_name,
    )
    return _fire(page, 0, now, policy, resolve)


def on_deadline(
    page: Page, now: datetime, policy: EscalationPolicy, resolve: Resolve
) -> tuple[Page, list[Action]]:
    """Escalate ``page`` if its deadline has passed; otherwise return it unchanged, with no
    actions (so a duplicate or early call is harmless)."""
    _aware(now)
    if page.state != OPEN or page.step_deadline is None or now < page.step_deadline:
        return page, []
    return _fire(page, page.step + 1, now, policy, resolve)


def on_ack(
    page: Page, staff_number: str, how: str, now: datetime, policy: EscalationPolicy
) -> tuple[Page, list[Action]]:
    """``staff_number`` acknowledged by ``how`` ("reply", "reaction", "read" or "command").
    Ignored (page unchanged, no actions) unless they were paged, the method may acknowledge
    this page (:func:`acknowledges`) and the page is not already acknowledged.
    ``now`` is shown to people: pass it in the hospital's time zone. One action, so one notice:
    it tells the sender and everyone else who was paged."""
    _aware(now)
    if page.state == ACKED or staff_number not in page.paged or not acknowledges(how, page, policy):
        return page, []
    late = " (after escalation had ended)" if page.state == EXHAUSTED else ""
    late_zh = "（升级已结束之后）" if page.state == EXHAUSTED else ""
    when = now.strftime("%H:%M %Z").strip()
    acked = replace(page, state=ACKED, acked_by=staff_number, acked_at=now, step_deadline=None)
    others = tuple(s for s in page.paged if s != staff_number)
    about = f" ({page.subject.splitlines()[0][:120]})" if page.subject else ""
    return acked, [
        Action(
            "acked",
            others,
            page.step,
            "routine",
            f"呼叫 [{page.alert_id}]（{page.role_name or page.role}）已由 {staff_number} 于 {when} "
            f"以{HOW_ZH.get(how, how)}确认{late_zh}。 "
            f"{staff_number} acknowledged page [{page.alert_id}] to {page.role_name or page.role}{about} "
            f"by {how} at {when}{late}.",
        ),
    ]


def hand_over(
    page: Page, to_staff: str, by_staff: str, now: datetime, timeout_seconds: int
) -> tuple[Page, list[Action]]:
    """A charge nurse hands an open page to ``to_staff`` (from the console): they are paged
    with the page's text and priority, and the page's escalation runs from them — they
    become its lead (see :func:`plan`), so if they do not acknowledge within
    ``timeout_seconds`` the role's own chain runs again from its first step. Everyone paged
    so far stays paged (the record of who was interrupted; any of them may still
    acknowledge). The sender and the room are told who took over and who handed it over.
    Only an open page can be handed over (page unchanged, no actions otherwise).
    Staff numbers in the messages are written as names by the caller."""
    _aware(now)
    if page.state != OPEN or timeout_seconds <= 0:
        return page, []
    before = tuple(s for s in page.paged if s != to_staff)
    new = replace(
        page, lead=f"staff:{to_staff}", step=0, paged=tuple(dict.fromkeys((*page.paged, to_staff))),
        step_deadline=now.astimezone(UTC) + timedelta(seconds=timeout_seconds), state=OPEN,
    )
    about = f" ({page.subject.splitlines()[0][:120]})" if page.subject else ""
    was = f"，原呼叫 previously paged: {_names(before)}" if before else ""
    told = (
        f"呼叫 [{page.alert_id}] 已转交 Page handed over{about}: {to_staff} 接手 takes over, "
        f"转交人 handed over by {by_staff}{was}. "
        f"{_minutes(timeout_seconds)} 内未确认将继续升级 Escalation continues if not acknowledged within "
        f"{_minutes(timeout_seconds)}."
    )
    return new, [
        Action("page", (to_staff,), 0, page.priority, handover_text(page, by_staff, before)),
        Action("handed_over", before, 0, "routine", told),
    ]


def handover_text(page: Page, by_staff: str, before: tuple[str, ...]) -> str:
    """The page as the person it was handed to reads it: Chinese first, English beside."""
    head = "危急呼叫 CRITICAL PAGE" if page.priority == "critical" else "呼叫 Page"
    about = f": {page.subject}" if page.subject else ""
    was = f" · 原呼叫 previously paged: {_names(before)}" if before else ""
    return (
        f"{head} [{page.alert_id}] 转交给您 handed over to you — {page.role_name or page.role}{about}\n"
        f"转交人 Handed over by: {by_staff}{was}\n"
        f"确认：回复或回应本消息，或发送 !ack {page.alert_id} "
        f"Acknowledge: reply to or react to this message, or send !ack {page.alert_id}"
    )


def acknowledges(how: str, page: Page, policy: EscalationPolicy) -> bool:
    """Whether ``how`` may acknowledge this page: allowed by the role's policy, and never a
    mere read receipt for a critical page."""
    if how == "command":  # "!ack <id>" names the page: always an explicit acknowledgement
        return True
    if how not in policy.ack_by:
        return False
    return not (how == "read" and page.priority == "critical")


def due(pages: Iterable[Page], now: datetime) -> list[Page]:
    """Open pages whose step deadline has passed, most overdue first."""
    _aware(now)
    ready = [p for p in pages if p.state == OPEN and p.step_deadline and p.step_deadline <= now]
    return sorted(ready, key=lambda p: p.step_deadline or now)


@dataclass(frozen=True)
class RosterGap:
    """A step of a page that found nobody on duty, and whom the policy's fallback paged in its
    place (nobody: the fallback was empty too)."""

    step: int
    fallback_paged: tuple[str, ...]


def roster_gaps(actions: Iterable[Action]) -> list[RosterGap]:
    """The roster gaps a page met, read from the actions its transitions produced (in order,
    as the outbox keeps them): ``_fire`` puts the fallback's ``page`` right after the step's
    ``gap``; a step whose fallback was empty too pages nobody (the next step is tried)."""
    listed = list(actions)
    gaps = []
    for i, action in enumerate(listed):
        if action.kind != "gap":
            continue
        after = listed[i + 1] if i + 1 < len(listed) else None
        fallback = after.staff if after is not None and after.kind == "page" and after.step == action.step else ()
        gaps.append(RosterGap(action.step, fallback))
    return gaps
