"""Shift hand-over: at a shift change, conversations a role had in the last day get the
incoming holder (who sees the history) and a notice; ``handover: release`` tells the outgoing
holder they are no longer paged there."""

from __future__ import annotations

import logging
from datetime import timedelta
from urllib.parse import quote

from appservice.homeserver import MatrixCallFailed
from appservice.oncall.context import OncallContext

log = logging.getLogger("carematrix.appservice.oncall")


class ShiftHandover:
    def __init__(self, ctx: OncallContext) -> None:
        self.ctx = ctx

    async def hand_over(self) -> None:
        ctx = self.ctx
        oncall = ctx.oncall
        if oncall is None:
            return
        now = ctx.clock.now()
        for role in oncall.roles.values():
            holders = ctx.roster.on_duty(role.id, now)
            last = await ctx.store.last_holders(role.id)
            if last is None or tuple(last) == holders:
                if last is None:
                    await ctx.store.set_last_holders(role.id, holders)
                continue
            incoming = [s for s in holders if s not in last]
            outgoing = [s for s in last if s not in holders]
            role_user = ctx.matrix.uid(role.localpart)
            for room_id in await ctx.store.recent_rooms(role.id, now - timedelta(days=1)):
                for staff in incoming:
                    try:
                        await ctx.matrix.call(
                            "POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/invite",
                            {"user_id": ctx.user_id(staff), "reason": "交接班 Shift change"}, as_user=role_user,
                        )
                    except MatrixCallFailed as exc:
                        log.info("hand-over invite of %s to %s: %s", staff, room_id, exc)
                released = outgoing and role.handover == "release"
                text = (
                    f"交接班：{', '.join(ctx.name(s) for s in incoming) or '无人'} 现担任 {role.name}"
                    + (f"，接替 {', '.join(ctx.name(s) for s in outgoing)}" if outgoing else "")
                    + ("；交班人员不再在此对话中接收呼叫。 " if released else "。 ")
                    + f"Shift change: {', '.join(ctx.name(s) for s in incoming) or 'nobody'} now holds {role.name}"
                    + (f", taking over from {', '.join(ctx.name(s) for s in outgoing)}" if outgoing else "")
                    + ("; they are released from this conversation." if released else ".")
                )
                try:
                    await ctx.notice(room_id, role_user, text, None, mentions=[ctx.user_id(s) for s in incoming + outgoing])
                except MatrixCallFailed as exc:
                    # A room the role can no longer post in (a closed, read-only case room;
                    # one it was removed from) must not hold up the hand-over everywhere else.
                    log.info("hand-over notice in %s not sent: %s", room_id, exc)
            await ctx.store.set_last_holders(role.id, holders)
            await ctx.audit.record(
                actor=ctx.bot, action="appservice.roster.handover", object=role.id, outcome="success",
                process="appservice", details={"incoming": incoming, "outgoing": outgoing},
            )
