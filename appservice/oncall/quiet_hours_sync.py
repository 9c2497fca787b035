"""Quiet hours applied: staff who work shifts get their notifications silenced while off duty
(critical messages and pages addressed to them still ring), by keeping their push rules as
appservice.oncall.quiet_hours says, each pass, as the user (an admin-API login)."""

from __future__ import annotations

import logging
from urllib.parse import quote

from appservice.homeserver import MatrixCallFailed
from appservice.oncall import quiet_hours
from appservice.oncall.context import OncallContext
from appservice.oncall.feeds import ROSTER_AHEAD, ROSTER_PAST

log = logging.getLogger("carematrix.appservice.oncall")


class NoAccountYet(Exception):
    """A rostered member of staff has no Matrix account (yet): org sync creates it."""


class QuietHoursSync:
    def __init__(self, ctx: OncallContext) -> None:
        self.ctx = ctx
        self._user_tokens: dict[str, str] = {}
        self._applied: dict[str, bool] = {}

    async def set_quiet(self, requester: str, on: bool) -> str:
        """``!quiet on|off``: the person's own choice, over the hospital default."""
        staff = self.ctx.staff_of(requester)
        if staff is None:
            return "免打扰时段仅适用于排班表上的员工。 Quiet hours are for staff on the roster."
        await self.ctx.store.set_quiet_pref(staff, on)
        await self.apply()
        return (
            "免打扰已开启：下班期间只有危急警报和发给您的呼叫会响铃。"
            " Quiet hours on: off duty, only critical alerts and pages addressed to you will ring."
            if on else "免打扰已关闭：您的通知始终按您自己的设置提醒。"
            " Quiet hours off: your notifications follow your own settings at all times."
        )

    async def apply(self) -> None:
        """Staff who work shifts get their notifications silenced while off duty; critical
        messages and pages addressed to them still ring (appservice.oncall.quiet_hours)."""
        ctx = self.ctx
        oncall = ctx.oncall
        if oncall is None or oncall.quiet_hours == "off":
            return
        now = ctx.clock.now()
        shift_workers = {s for role in oncall.roles for _, _, holders in ctx.roster.holders_between(role, now - ROSTER_PAST, now + ROSTER_AHEAD) for s in holders}
        prefs = await ctx.store.quiet_prefs()
        default = oncall.quiet_hours == "everyone"
        for staff in sorted(shift_workers):
            # Someone who has not chosen follows the hospital default; choosing "off" keeps
            # every notification as the client's own settings say.
            off = prefs.get(staff, default) and not ctx.roster.is_on_duty(staff, now)
            # Checked every pass, not only when the shift changes: a room the user mutes
            # afterwards lands above our rules, and the critical rule must go back on top.
            try:
                await self._set_quiet(ctx.user_id(staff), off)
                self._applied[staff] = off
            except NoAccountYet:
                # Org sync creates staff accounts (and reports any it cannot); the next pass
                # applies this person's quiet hours once the account exists.
                log.debug("quiet hours for %s: no account yet", staff)
            except MatrixCallFailed as exc:
                log.error("quiet hours for %s: %s", staff, exc)

    async def _set_quiet(self, user_id: str, off_duty: bool) -> None:
        user = self.ctx.matrix.with_token(await self.token_for(user_id))
        rules = "/_matrix/client/v3/pushrules/global/override/"
        try:
            current = (await user.call("GET", "/_matrix/client/v3/pushrules/global/")).get("override", [])
        except MatrixCallFailed:
            current = []
        for op, rule_id, body, before in quiet_hours.needed_changes(current, off_duty, user_id=user_id):
            path = rules + quote(rule_id)
            if op == "put":
                await user.call("PUT", path + (f"?before={quote(before)}" if before else ""), body)
                continue
            try:  # a rule already gone, or already as wanted, is no failure
                if op == "delete":
                    await user.call("DELETE", path)
                elif op in ("enable", "disable"):
                    await user.call("PUT", path + "/enabled", {"enabled": op == "enable"})
            except MatrixCallFailed as exc:
                log.debug("quiet hours for %s: %s", user_id, exc)

    async def token_for(self, user_id: str) -> str:
        token = self._user_tokens.get(user_id)
        if token is None:
            try:
                data = await self.ctx.matrix.call("POST", f"/_synapse/admin/v1/users/{quote(user_id)}/login", {})
            except MatrixCallFailed as exc:
                if exc.status == 404:
                    raise NoAccountYet(user_id) from exc
                raise
            token = data["access_token"]
            self._user_tokens[user_id] = token
        return token
