"""Role accounts: every role address is a Matrix account in the appservice's namespace, named
so staff find it; it joins the rooms it is invited to or brought into, and its ``#role-…``
alias resolves to the role's desk room."""

from __future__ import annotations

import logging
import uuid
from urllib.parse import quote

from appservice.homeserver import MatrixCallFailed
from appservice.oncall.context import OncallContext
from carematrix import identity
from carematrix.policy.oncall import RoleAddress

log = logging.getLogger("carematrix.appservice.oncall")


class RoleAccounts:
    def __init__(self, ctx: OncallContext) -> None:
        self.ctx = ctx
        self.roles_named = False
        self._registered: set[str] = set()

    async def ensure_role_accounts(self) -> None:
        """Every role address is a Matrix account in the appservice's namespace, named so
        staff find it in the user directory."""
        ctx = self.ctx
        oncall = ctx.oncall
        if oncall is None:
            return
        for role in oncall.roles.values():
            uid = ctx.matrix.uid(role.localpart)
            await self._register_once(uid, role.localpart)
            try:
                await ctx.matrix.call("PUT", f"/_synapse/admin/v2/users/{quote(uid)}", {"displayname": role.name})
            except MatrixCallFailed as exc:
                # On a fresh deployment the bot becomes server admin only after start-up;
                # the on-call loop tries again.
                log.info("role %s: display name not set yet (%s)", role.id, exc.errcode)
                self.roles_named = False
                return
        self.roles_named = True

    async def _register_once(self, uid: str, localpart: str) -> None:
        """Register a role account unless it exists. Looked up first: registering a taken
        name fails inside the database, which PostgreSQL logs as an error at every start."""
        if uid in self._registered:
            return
        matrix = self.ctx.matrix
        try:
            await matrix.call("GET", f"/_matrix/client/v3/profile/{quote(uid)}")
        except MatrixCallFailed as exc:
            if exc.status != 404:
                raise
            try:
                await matrix.call(
                    "POST", "/_matrix/client/v3/register",
                    {"type": "m.login.application_service", "username": localpart},
                )
            except MatrixCallFailed as exc:
                if exc.errcode != "M_USER_IN_USE":
                    raise
        self._registered.add(uid)

    async def query_alias(self, alias: str) -> dict | None:
        """``#role-cardiology-attending`` resolves to the role's desk room, created the first
        time anyone looks it up (the appservice owns the ``#role-…`` aliases). Joining it and
        writing pages the role like a DM does; a DM keeps the conversation private."""
        ctx = self.ctx
        localpart = identity.localpart(alias) if alias.startswith("#") else ""
        role = ctx.oncall.role_for_localpart(localpart) if ctx.oncall else None
        if role is None:
            return None
        role_user = ctx.matrix.uid(role.localpart)
        created = await ctx.matrix.call(
            "POST", "/_matrix/client/v3/createRoom",
            {
                "room_alias_name": localpart, "preset": "public_chat", "name": role.name,
                "topic": f"在此发消息会呼叫当前的 {role.name}；私下沟通请直接给该角色发消息。"
                f" Messages here page whoever is {role.name} now. For a private conversation, message the role directly.",
            },
            as_user=role_user,
        )
        await ctx.store.set_role_room(created["room_id"], role.id, role_user, True)
        log.info("created the desk room %s for %s", alias, role.id)
        # Synapse only needs a 200 and then looks the alias up itself; the body must not be
        # empty for mautrix, which answers 404 for a falsy result.
        return {"room_id": created["room_id"]}

    async def on_member(
        self, room_id: str, sender: str, state_key: str, membership: str, direct: bool = False,
        event_id: str | None = None,
    ) -> bool:
        """A role account invited somewhere joins and explains itself (once per invite: the
        notice's transaction ID is made from the invite, which a restart may handle again).
        True if handled."""
        ctx = self.ctx
        role = ctx.role_of_user(state_key)
        if role is None or membership != "invite":
            return False
        if identity.server_name(sender) != ctx.matrix.server:
            return True
        # Recorded before joining: the requester's first message may arrive right after.
        await ctx.store.set_role_room(room_id, role.id, sender, direct)
        await ctx.matrix.call("POST", f"/_matrix/client/v3/join/{quote(room_id)}", {}, as_user=state_key)
        holders = ctx.roster.on_duty(role.id, ctx.clock.now())
        who = ", ".join(ctx.name(s) for s in holders) or "nobody (a roster gap: your message will go to the fallback)"
        who_zh = ", ".join(ctx.name(s) for s in holders) or "无人（排班空缺：您的消息将发给后备人员）"
        how = "Write your message here" if direct else f"Mention {role.name} in a message"
        how_zh = "在此发消息" if direct else f"在消息中提及 {role.name}"
        await ctx.notice(
            room_id, state_key,
            f"这里是 {role.name}。当前值班：{who_zh}。{how_zh}即可呼叫当前值班人员。"
            f" This is {role.name}. On duty now: {who}. {how}: it pages whoever is on duty.",
            f"intro-{uuid.uuid5(uuid.NAMESPACE_URL, event_id).hex}" if event_id else None,
        )
        return True

    async def ensure_in_room(self, role: RoleAddress, room_id: str) -> None:
        """The bot (which created the hospital's standard rooms) invites the role account,
        which joins. Usually it is in already, which a read of its membership tells without
        any write (an invite to a member is refused only after the homeserver checked it)."""
        ctx = self.ctx
        role_user = ctx.matrix.uid(role.localpart)
        membership = await ctx.membership(room_id, role_user, role_user)
        if membership == "join":
            return
        if membership != "invite":
            try:
                await ctx.matrix.call("POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/invite", {"user_id": role_user})
            except MatrixCallFailed as exc:
                log.debug("invite of %s to %s: %s", role_user, room_id, exc)
        await ctx.matrix.call("POST", f"/_matrix/client/v3/join/{quote(room_id)}", {}, as_user=role_user)
