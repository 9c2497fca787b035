"""The roster commands staff send the service: ``!oncall [unit]`` (who is on duty, and who
next), ``!oncall cover …`` and ``!oncall swap …``. A refused command is on record with its
rule, like every refusal."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from appservice.oncall.context import OncallContext, zone
from appservice.oncall.swap import swap
from carematrix.audit import actions as A
from carematrix.calls import typed_key
from carematrix.oncall.model import Override
from carematrix.rules import Verdict
from carematrix.rules.oncall import decide_cover, decide_swap

log = logging.getLogger("carematrix.appservice.oncall")


class RosterCommands:
    def __init__(self, ctx: OncallContext) -> None:
        self.ctx = ctx

    def local_today(self, hour: int, minute: int) -> datetime:
        """HH:MM today in the hospital's time zone (tomorrow if that has passed)."""
        now = self.ctx.local_now()
        at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return at if at > now else at + timedelta(days=1)

    def listing(self, unit: str | None) -> str:
        """Who holds each role now and next: every role, or one unit's, the unit named by
        its ID in any case or by its name (``!oncall ICU``, ``!oncall 重症医学科``)."""
        ctx = self.ctx
        oncall = ctx.oncall
        if oncall is None:
            return "本医院未配置值班角色。 This hospital has no on-call roles configured."
        now = ctx.clock.now()
        roster = ctx.roster
        units = self._units_meant(unit) if unit else None
        lines = []
        for role in sorted(oncall.roles.values(), key=lambda r: r.id):
            if units is not None and not any(role.id.startswith(u + "/") or role.unit == u for u in units):
                continue
            holders = roster.on_duty(role.id, now)
            change = roster.next_change(role.id, now)
            nxt = ""
            if change is not None:
                after = roster.on_duty(role.id, change)
                local = change.astimezone(zone(oncall.timezone)).strftime("%a %H:%M")
                nxt = f"; from {local}: " + (", ".join(ctx.name(s) for s in after) or "无人 nobody")
            lines.append(
                f"{role.name}: " + (", ".join(ctx.name(s) for s in holders) or "无人值班 NOBODY (roster gap)") + nxt
            )
        if lines:
            return "\n".join(lines)
        with_roles = sorted({r.unit for r in oncall.roles.values()})
        org_units = ctx.policy.units
        known = ", ".join(f"{u} ({org_units[u].name})" if u in org_units else u for u in with_roles)
        return (
            f"'{unit}' 没有值班角色。有值班角色的科室：{known}（如 !oncall {with_roles[0] if with_roles else 'icu'}）。"
            f" No on-call roles for '{unit}'. Units with on-call roles: {known}."
        )

    def _units_meant(self, given: str) -> set[str]:
        """The unit IDs ``given`` names: an ID in any case, else the units whose name holds it."""
        units = self.ctx.policy.units
        key = typed_key(given)
        exact = {u for u in units if typed_key(u) == key}
        return exact or {u for u, unit in units.items() if key and key in typed_key(unit.name)}

    async def cover(self, requester: str, role_id: str, until: datetime, staff_number: str) -> str:
        ctx = self.ctx
        oncall = ctx.oncall
        person = ctx.person(requester)
        if oncall is None or role_id not in oncall.roles:
            return f"未知的值班角色 '{role_id}'。 Unknown role '{role_id}'."
        now = ctx.clock.now()
        holders = ctx.roster.on_duty(role_id, now)
        verdict = decide_cover(person, oncall.roles[role_id].name, holders, oncall.overrides_by)
        if not verdict.allowed:
            return await self._refuse(requester, verdict, f"cover {role_id}")
        replaces = holders[0] if holders else None
        override = Override(role_id, staff_number, now, until, replaces, person.staff_number if person else "?", "cover")
        await ctx.store.add_override(uuid.uuid4().hex, override)
        await ctx.reload_roster()
        await ctx.audit.record(
            actor=requester, action="appservice.roster.cover", object=role_id, outcome="success", process="appservice",
            details={"staff": staff_number, "replaces": replaces, "until": until.isoformat()},
        )
        until_local = f"{until.astimezone(zone(oncall.timezone)):%H:%M}"
        role_name = oncall.roles[role_id].name
        return (
            f"{ctx.name(staff_number)} 顶班 {role_name} 至 {until_local}。"
            f" {ctx.name(staff_number)} covers {role_name} until {until_local}."
        )

    async def _refuse(self, requester: str, verdict: Verdict, action: str) -> str:
        """A refused command is on record with its rule, like every refusal; the reply
        names the rule."""
        log.info("policy denial rule=%s user=%s action=%s", verdict.rule, requester, action)
        await self.ctx.audit.record(
            actor=requester, action=A.POLICY_DENIED, object=action, outcome=A.DENIED, rule=verdict.rule,
            process="appservice",
        )
        return verdict.message()

    async def swap_shifts(self, requester: str, role_id: str, other: str) -> str:
        """The requester's next shift of ``role_id`` (the current one if on it) and the
        other person's next one are traded."""
        ctx = self.ctx
        oncall = ctx.oncall
        person = ctx.person(requester)
        if oncall is None or role_id not in oncall.roles:
            return f"未知的值班角色 '{role_id}'。 Unknown role '{role_id}'."
        verdict = decide_swap(person)
        if person is None or not verdict.allowed:
            return await self._refuse(requester, verdict, f"swap {role_id}")
        me = person.staff_number
        now = ctx.clock.now()
        shifts = [s for s in await ctx.store.shifts() if s.role == role_id and s.end > now]

        def next_of(staff: str) -> Any:
            mine = sorted((s for s in shifts if s.staff_number == staff), key=lambda s: s.start)
            return mine[0] if mine else None

        a, b = next_of(me), next_of(other)
        if a is None or b is None:
            who = ctx.name(me if a is None else other)
            role_name = oncall.roles[role_id].name
            return f"{who} 没有可交换的 {role_name} 班次。 {who} has no coming shift of {role_name} to swap."
        try:
            first, second = swap(a, b, me)
        except ValueError as exc:
            return f"不能和自己换班。 {exc}"
        for override in (first, second):
            await ctx.store.add_override(uuid.uuid4().hex, override)
        await ctx.reload_roster()
        await ctx.audit.record(
            actor=requester, action="appservice.roster.swap", object=role_id, outcome="success",
            process="appservice", details={"with": other, "mine": a.start.isoformat(), "theirs": b.start.isoformat()},
        )
        tz = zone(oncall.timezone)
        return (
            f"换班完成：{ctx.name(me)} 与 {ctx.name(other)} 已互换班次。 "
            f"Swapped: {ctx.name(me)} takes {b.start.astimezone(tz):%a %H:%M}–{b.end.astimezone(tz):%H:%M}, "
            f"{ctx.name(other)} takes {a.start.astimezone(tz):%a %H:%M}–{a.end.astimezone(tz):%H:%M}."
        )
