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
        ctx = self.ctx
        oncall = ctx.oncall
        if oncall is None:
            return "This hospital has no on-call roles configured."
        now = ctx.clock.now()
        roster = ctx.roster
        lines = []
        for role in sorted(oncall.roles.values(), key=lambda r: r.id):
            if unit and not role.id.startswith(unit + "/") and role.unit != unit:
                continue
            holders = roster.on_duty(role.id, now)
            change = roster.next_change(role.id, now)
            nxt = ""
            if change is not None:
                after = roster.on_duty(role.id, change)
                local = change.astimezone(zone(oncall.timezone)).strftime("%a %H:%M")
                nxt = f"; from {local}: " + (", ".join(ctx.name(s) for s in after) or "nobody")
            lines.append(f"{role.name}: " + (", ".join(ctx.name(s) for s in holders) or "NOBODY (roster gap)") + nxt)
        return "\n".join(lines) or f"No on-call roles for '{unit}'."

    async def cover(self, requester: str, role_id: str, until: datetime, staff_number: str) -> str:
        ctx = self.ctx
        oncall = ctx.oncall
        person = ctx.person(requester)
        if oncall is None or role_id not in oncall.roles:
            return f"Unknown role '{role_id}'."
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
        return f"{ctx.name(staff_number)} covers {oncall.roles[role_id].name} until {until.astimezone(zone(oncall.timezone)):%H:%M}."

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
            return f"Unknown role '{role_id}'."
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
            return f"{who} has no coming shift of {oncall.roles[role_id].name} to swap."
        try:
            first, second = swap(a, b, me)
        except ValueError as exc:
            return str(exc)
        for override in (first, second):
            await ctx.store.add_override(uuid.uuid4().hex, override)
        await ctx.reload_roster()
        await ctx.audit.record(
            actor=requester, action="appservice.roster.swap", object=role_id, outcome="success",
            process="appservice", details={"with": other, "mine": a.start.isoformat(), "theirs": b.start.isoformat()},
        )
        tz = zone(oncall.timezone)
        return (
            f"Swapped: {ctx.name(me)} takes {b.start.astimezone(tz):%a %H:%M}–{b.end.astimezone(tz):%H:%M}, "
            f"{ctx.name(other)} takes {a.start.astimezone(tz):%a %H:%M}–{a.end.astimezone(tz):%H:%M}."
        )
