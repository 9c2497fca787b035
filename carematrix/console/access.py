"""Who may open which console page: a pure function of the person's staff record (roles from
the policy) and whether the account is a server admin. Every refusal names a rule ID, and the
same matrix decides the navigation bar, the page and every action on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from carematrix.policy.model import Policy
from carematrix.policy.org import Staff
from carematrix.rules.verdict import ALLOW, Verdict

# Policy roles (``roles:`` in hospital.yaml) that open pages beyond the on-call board.
CHARGE_ROLE = "charge_nurse"  # charge nurses and unit heads: open alerts, re-page
AUDITOR_ROLE = "auditor"


@dataclass(frozen=True)
class Page:
    key: str
    title: str  # Chinese first, English beside it
    rule: str  # the rule a refusal names
    roles: frozenset[str]  # policy roles that open it (empty: every member of staff)
    admin: bool = False  # server admins only (whatever their roles)
    admins_too: bool = False  # server admins open it besides the staff with ``roles``


PAGES: tuple[Page, ...] = (
    Page("board", "值班表 On-call board", "console.board_staff_only", frozenset()),
    Page("alerts", "告警 Alerts", "console.alerts_charge_only", frozenset({CHARGE_ROLE}), admins_too=True),
    Page("fatigue", "告警疲劳 Alarm fatigue", "console.fatigue_charge_or_auditor", frozenset({CHARGE_ROLE, AUDITOR_ROLE})),
    Page("audit", "审计 Audit", "console.audit_auditor_only", frozenset({AUDITOR_ROLE})),
    Page("system", "系统 System", "console.system_admin_only", frozenset(), admin=True),
)
BY_KEY = {p.key: p for p in PAGES}


@dataclass(frozen=True)
class PageAction:
    """Something a page lets a person do (a form it posts), decided separately from opening
    the page: the right to see the alerts is not by itself the right to move a page on."""

    key: str
    page: str  # the page it is on
    title: str
    rule: str
    roles: frozenset[str]


ACTIONS: tuple[PageAction, ...] = (
    PageAction("repage", "alerts", "再次呼叫 Re-page", "console.repage_charge_only", frozenset({CHARGE_ROLE})),
    PageAction("handover", "alerts", "转交 Hand over", "console.handover_charge_only", frozenset({CHARGE_ROLE})),
)
ACTION_BY_KEY = {a.key: a for a in ACTIONS}


def decide_page(page_key: str, person: Staff | None, is_admin: bool) -> Verdict:
    """May this person open ``page_key``? Staff without a record in the policy (the admin
    account, service accounts) open only what being a server admin opens."""
    page = BY_KEY.get(page_key)
    if page is None:
        return Verdict(False, "console.unknown_page", "没有这个页面 No such page.")
    if page.admin:
        if is_admin:
            return ALLOW
        return Verdict(False, page.rule, f"{page.title}: 仅限服务器管理员 server admins only.")
    if page.admins_too and is_admin:
        return ALLOW
    if person is None:
        return Verdict(False, page.rule, f"{page.title}: 仅限医院员工 hospital staff only.")
    if not page.roles or page.roles & person.roles:
        return ALLOW
    wanted = " / ".join(f"'{r}'" for r in sorted(page.roles))
    return Verdict(False, page.rule, f"{page.title}: 需要角色 needs the role {wanted}.")


def decide_action(action_key: str, person: Staff | None) -> Verdict:
    """May this person do ``action_key`` (re-page, hand over)? Only staff with one of its
    roles; a server admin without a staff record may not (the admin runs the server, not
    the ward)."""
    action = ACTION_BY_KEY.get(action_key)
    if action is None:
        return Verdict(False, "console.unknown_action", "没有这个操作 No such action.")
    if person is not None and action.roles & person.roles:
        return ALLOW
    wanted = " / ".join(f"'{r}'" for r in sorted(action.roles))
    return Verdict(False, action.rule, f"{action.title}: 需要角色 needs the role {wanted}.")


def sees_alert(units: Sequence[str], person: Staff | None, is_admin: bool, policy: Policy) -> bool:
    """Is an alert about ``units`` (its role's unit, and its patient's ward's unit when
    known) one for this person? A server admin sees every alert; a charge nurse or unit head
    those of their units and the units below them (the head of cardiology sees ward 5A's,
    the head nurse of ward 5A not the ICU's)."""
    if is_admin:
        return True
    if person is None:
        return False
    return any(mine in policy.ancestry(unit) for unit in units for mine in person.units)


def visible_pages(person: Staff | None, is_admin: bool) -> tuple[Page, ...]:
    """The pages in this person's navigation bar, in order."""
    return tuple(p for p in PAGES if decide_page(p.key, person, is_admin).allowed)
