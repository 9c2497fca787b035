"""``!call <role or person>``: one tap from a nurse to whoever holds a role now (or a named
colleague), in the shape Element's call button needs.

The service opens — or reuses — a direct chat between the two people with nobody else in it
(Element offers 1:1 voice and video calls only there): created as the caller, through the
same admin-API login quiet hours use, with the callee invited as to a direct chat and the room
filed under the caller's direct chats (``m.direct``). The callee is then paged "X is calling
you" at urgent priority in their direct chat with the service — a page notice like any other
(``org.carematrix.page``), so the quiet-hours breakthrough rings their phone — with a link to
the room. The caller is told whom they are calling and where to press the call button.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from mautrix.util.async_db import Database

from appservice.homeserver import Homeserver, HomeserverUnreachable, MatrixCallFailed
from appservice.oncall.service import OncallService
from carematrix.calls import call_target, room_carries_call

log = logging.getLogger("carematrix.appservice.calls")


class CallStore:
    """The room each pair of staff calls each other in (appservice.migrations, upgrade 4)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def room(self, a: str, b: str) -> str | None:
        a, b = sorted((a, b))
        row = await self.db.fetchrow("SELECT room_id FROM call_room WHERE user_a = $1 AND user_b = $2", a, b)
        return str(row["room_id"]) if row else None

    async def set_room(self, a: str, b: str, room_id: str) -> None:
        a, b = sorted((a, b))
        await self.db.execute(
            "INSERT INTO call_room (user_a, user_b, room_id) VALUES ($1, $2, $3) "
            "ON CONFLICT (user_a, user_b) DO UPDATE SET room_id = excluded.room_id",
            a, b, room_id,
        )


class CallService:
    def __init__(self, store: CallStore, oncall: OncallService, direct_room: Any) -> None:
        self.store = store
        self.oncall = oncall
        # The service's direct chat with a member of staff (ClinicalService.direct_room).
        self.direct_room = direct_room

    async def command(self, caller: str, args: tuple[str, ...]) -> str:
        if not args:
            return (
                "用法：!call <角色或员工>（例如 !call icu/doctor、!call 重症医学科值班医生、!call D2001 或 !call 陈静） "
                "Usage: !call <role or person>  (e.g. !call icu/doctor, a role's name, a staff number or a name)"
            )
        ctx = self.oncall.ctx
        if ctx.person(caller) is None:
            return "只有医院员工名单上的员工可以发起通话。 Only staff on the hospital's staff list can place calls."
        # A role's name is written with spaces (重症医学科 · 值班医生): all the words are the one target.
        target = call_target(ctx.policy, " ".join(args), ctx.matrix.server)
        if isinstance(target, str):
            return target
        role_words = ""
        gap = False
        if target.role_id is not None:
            holders = self.oncall.first_paged(target.role_id)
            role = ctx.oncall.roles[target.role_id] if ctx.oncall else None
            role_name = role.name if role else target.role_id
            if not holders:
                return (f"现在无人值班 {role_name}，也未设置后备；请给该角色发消息（会逐级升级）。 "
                        f"Nobody holds {role_name} now and no fallback is set; message the role instead (it escalates).")
            staff = holders[0]
            role_words = f", {role_name}"
            if not ctx.roster.on_duty(target.role_id, ctx.local_now()):
                # A roster gap: the caller must know they reach the fallback, not the duty doctor.
                gap = True
                log.warning("!call from %s to %s: roster gap, calling the fallback %s", caller, target.role_id, staff)
                role_words += " — 排班空缺，呼叫后备 roster gap, as the fallback"
        else:
            assert target.staff_number is not None
            staff = target.staff_number
        callee = ctx.user_id(staff)
        if callee == caller:
            return f"这就是您本人{role_words}。 That is you{role_words}."
        try:
            room_id, reused = await self._room(caller, callee)
            await self._ring(caller, callee, room_id, role_words)
        except (MatrixCallFailed, HomeserverUnreachable) as exc:
            log.warning("!call from %s to %s failed: %s", caller, callee, exc)
            return (
                f"无法建立与 {ctx.name(staff)} 的通话。请重试，或打电话联系。"
                f" The call to {ctx.name(staff)} could not be set up: {exc}. Try again, or phone them."
            )
        await ctx.audit.record(
            actor=caller, action="appservice.call.opened", object=callee, room=room_id, outcome="success",
            process="appservice", details={"role": target.role_id or "", "reused": reused, "roster_gap": gap},
        )
        return (
            f"📞 正在呼叫 Calling {ctx.name(staff)}{role_words}: https://matrix.to/#/{room_id} — "
            "打开后按通话按钮（已呼叫对方）。 open it and press the call button (they have been paged)."
        )

    async def _room(self, caller: str, callee: str) -> tuple[str, bool]:
        """Their two-person room: the one they had, if it still holds just the two of them;
        else a new direct chat made as the caller."""
        as_caller = await self.oncall.as_user(caller)
        known = await self.store.room(caller, callee)
        if known is not None and room_carries_call(await _memberships(as_caller, known), caller, callee):
            return known, True
        created = await as_caller.call("POST", "/_matrix/client/v3/createRoom", {
            "preset": "trusted_private_chat", "is_direct": True, "invite": [callee],
        })
        room_id = str(created["room_id"])
        await self.store.set_room(caller, callee, room_id)
        await _file_as_direct(as_caller, caller, callee, room_id)
        return room_id, False

    async def _ring(self, caller: str, callee: str, room_id: str, role_words: str) -> None:
        ctx = self.oncall.ctx
        chat = await self.direct_room(callee)
        if await ctx.membership(chat, callee) != "join":
            # A page in a room they were only invited to rings nothing (push rules notify
            # members): the service's own direct chat is joined for them, as org sync joins
            # staff to their unit rooms.
            await ctx.matrix.call("POST", f"/_synapse/admin/v1/join/{quote(chat)}", {"user_id": callee})
        text = (
            f"📞 {ctx.display(caller)} 正在呼叫您 is calling you{role_words}. "
            f"接听 Answer: https://matrix.to/#/{room_id}"
        )
        await ctx.notice(chat, ctx.bot, text, None, mentions=[callee], priority="urgent", page=True)


async def _memberships(user: Homeserver, room_id: str) -> dict[str, str]:
    try:
        state = await user.call("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state")
    except MatrixCallFailed:
        return {}  # the caller left it (or it is gone): a new one is made
    return {
        str(e.get("state_key")): str(e.get("content", {}).get("membership"))
        for e in state if isinstance(e, dict) and e.get("type") == "m.room.member"
    }


async def _file_as_direct(user: Homeserver, caller: str, callee: str, room_id: str) -> None:
    """Element lists a room as a direct chat (and places its calls as 1:1) from the user's
    ``m.direct`` account data; a client creating a DM writes it, so we do as the caller."""
    path = f"/_matrix/client/v3/user/{quote(caller)}/account_data/m.direct"
    try:
        direct = await user.call("GET", path)
    except MatrixCallFailed:
        direct = {}
    rooms = list(direct.get(callee, [])) if isinstance(direct, dict) else []
    if room_id not in rooms:
        await user.call("PUT", path, {**(direct if isinstance(direct, dict) else {}), callee: [*rooms, room_id]})
