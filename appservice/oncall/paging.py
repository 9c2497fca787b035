"""Pages: opened by the first message a member sends in a room with a role account (a DM to
"Cardiology – attending on duty", or a room the role was invited to, when the message mentions
it) or by the service for a hospital system or a case room; escalated by the tick when a step's
deadline passes; ended when the conversation is over. Each transition is committed with its
sends (the outbox) and then sent."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from appservice.homeserver import HomeserverUnreachable, MatrixCallFailed
from appservice.oncall.accounts import RoleAccounts
from appservice.oncall.context import OncallContext, first_line
from appservice.oncall.outbox import Outbox
from appservice.timing import point, step
from carematrix.intake import addresses_role
from carematrix.oncall.escalation import (
    EscalationPolicy,
    Page,
    due,
    on_deadline,
    open_page,
    page_text,
    plan,
)
from carematrix.oncall.targets import resolver
from carematrix.rules.protection import PRIORITY_FIELD
from carematrix.voice.messages import page_subject, voice_message

log = logging.getLogger("carematrix.appservice.oncall")

LEAD_TIMEOUT_SECONDS = 300  # a page's lead (e.g. the ordering doctor) before the role's chain


def message_page_id(event_id: str, role_id: str) -> str:
    """The ID of the page a member's message opens for a role: the same every time that
    message is handled."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"page:{event_id}:{role_id}").hex


def escalation_for(ctx: OncallContext, page: Page) -> EscalationPolicy | None:
    """The escalation a page follows: its role's chain, after its lead if it has one."""
    role = ctx.oncall.roles.get(page.role) if ctx.oncall else None
    return plan(role.escalation, page.lead, LEAD_TIMEOUT_SECONDS) if role is not None else None


class Pager:
    def __init__(self, ctx: OncallContext, accounts: RoleAccounts, outbox: Outbox) -> None:
        self.ctx = ctx
        self.accounts = accounts
        self.outbox = outbox

    def _resolve(self, role_id: str) -> Any:
        ctx = self.ctx
        return resolver(ctx.roster, role_id, ctx.oncall.pools if ctx.oncall else {})

    async def addressed(self, room_id: str, content: dict) -> bool:
        """Whether a message in this room would page one of its roles (what the event inbox
        writes down before the homeserver is answered)."""
        oncall = self.ctx.oncall
        for role_id, direct in await self.ctx.store.role_rooms(room_id):
            role = oncall.roles.get(role_id) if oncall else None
            if role is not None and addresses_role(content, direct, self.ctx.matrix.uid(role.localpart), role.name):
                return True
        return False

    async def on_message(self, room_id: str, sender: str, event_id: str, content: dict) -> None:
        """In a direct chat with a role every message pages it; in a group room only a
        message that mentions the role does. The page's ID is made from the message and the
        role: a message handled again after a crash finds its page and opens no second one."""
        ctx = self.ctx
        roles = await ctx.store.role_rooms(room_id)
        if not roles:
            return
        body = str(content.get("body", ""))
        voice = voice_message(content)
        # Push-to-talk: a voice message pages like text; its words follow as the transcript.
        about = page_subject(voice.duration_ms) if voice is not None else first_line(body)
        opened: list[Page] = []
        async with ctx.page_lock:
            open_pages = await ctx.store.open_pages_in(room_id)
            staff = ctx.staff_of(sender)
            busy = {p.role for p in open_pages}
            oncall = ctx.oncall
            for role_id, direct in roles:
                role = oncall.roles.get(role_id) if oncall else None
                if role is None or role_id in busy or (staff is not None and any(staff in p.paged for p in open_pages)):
                    continue
                if not addresses_role(content, direct, ctx.matrix.uid(role.localpart), role.name):
                    continue
                page_id = message_page_id(event_id, role.id)
                if await ctx.store.page(page_id) is not None:
                    continue  # opened when this message was handled before a crash
                priority = str(content.get(PRIORITY_FIELD) or "urgent")
                page, actions = open_page(
                    page_id, role.id, sender, room_id, event_id, ctx.local_now(),
                    role.escalation, self._resolve(role.id),
                    priority=priority if priority in ("routine", "urgent", "critical") else "urgent",
                    subject=f"{ctx.display(sender)}: {about}", role_name=role.name,
                )
                await self.outbox.commit(page, actions)
                opened.append(page)
        for page in opened:
            await ctx.audit.record(
                actor=sender, action="appservice.page.opened", object=page.role, room=room_id, outcome="success",
                process="appservice", details={"page": page.page_id, "paged": list(page.paged)},
            )
        await self.outbox.flush()

    async def page_for_system(
        self, page_id: str, role_id: str, room_id: str, event_id: str, sender: str, *,
        priority: str = "critical", subject: str = "", lead: str | None = None,
        unreached: list[str] | None = None,
    ) -> Page | None:
        """A page opened by the service in a room the role account is brought into: for a
        hospital system (a critical result), or for a case room on behalf of the doctor who
        opened it (then ``sender``, who hears how it goes). Idempotent by ``page_id``: a
        redelivered message pages nobody twice. ``lead`` (``staff:<number>``) is paged first,
        before the role's own chain. ``unreached`` collects a sentence for each person who could
        not be brought into the room while the page was opened, for the caller to pass on."""
        ctx = self.ctx
        oncall = ctx.oncall
        role = oncall.roles.get(role_id) if oncall else None
        if role is None:
            return None
        existing = await ctx.store.page(page_id)
        if existing is not None:
            return existing
        with step("page: role account into the room"):
            await self.accounts.ensure_in_room(role, room_id)
        await ctx.store.set_role_room(room_id, role.id, sender, False)
        if unreached is not None:
            self.outbox.collect_unreached(page_id, unreached)
        try:
            with step("page: opened (lock wait, commit)"):
                async with ctx.page_lock:
                    page, actions = open_page(
                        page_id, role.id, sender, room_id, event_id, ctx.local_now(),
                        plan(role.escalation, lead, LEAD_TIMEOUT_SECONDS), self._resolve(role.id),
                        priority=priority, subject=subject, lead=lead, role_name=role.name,
                    )
                    await self.outbox.commit(page, actions)
            with step("page: audit record"):
                await ctx.audit.record(
                    actor=sender, action="appservice.page.opened", object=role.id, room=room_id, outcome="success",
                    process="appservice", details={"page": page_id, "paged": list(page.paged), "by": "hospital system"},
                )
            with step("page: outbox flush"):
                await self.outbox.flush()
        finally:
            self.outbox.stop_collecting(page_id)
        return page

    def first_paged(self, role_id: str, lead: str | None = None) -> tuple[str, ...]:
        """The staff numbers a page to ``role_id`` (with ``lead``) pages at once, as the
        escalation would decide now: whom to bring into a room being made for the page."""
        ctx = self.ctx
        role = ctx.oncall.roles.get(role_id) if ctx.oncall else None
        if role is None:
            return ()
        preview, _ = open_page(
            "preview", role.id, ctx.bot, "", "", ctx.local_now(), plan(role.escalation, lead, LEAD_TIMEOUT_SECONDS),
            self._resolve(role.id), priority="critical", lead=lead,
        )
        return preview.paged

    async def page_ahead(
        self, page_id: str, role_id: str, rooms: dict[str, str], *, priority: str, subject: str,
        lead: str | None = None, note: str = "",
    ) -> list[str]:
        """The page ``page_id`` (about to be opened for ``role_id``) told at once to the people
        it pages first, each in a room they are already in (``rooms``: staff number -> room,
        e.g. their direct chat with the service): one send reaches them while the page's own
        room is still being made. Each notice is the page's own (its alert ID; a reply or
        reaction to it acknowledges that page) and is sent as the service. The staff told."""
        ctx = self.ctx
        role = ctx.oncall.roles.get(role_id) if ctx.oncall else None
        if role is None or await ctx.store.page(page_id) is not None:
            return []  # no such role; or the page is open already (a redelivery): told then
        preview, _ = open_page(
            page_id, role.id, ctx.bot, "", "", ctx.local_now(), plan(role.escalation, lead, LEAD_TIMEOUT_SECONDS),
            self._resolve(role.id), priority=priority, subject=subject, lead=lead, role_name=role.name,
        )
        told = []
        for staff, room_id in rooms.items():
            text = page_text(preview) + (f"\n{note}" if note else "")
            before = datetime.now(UTC)
            try:
                event_id = await ctx.notice(
                    room_id, ctx.bot, text, f"{page_id}-ahead-{staff}", mentions=[ctx.user_id(staff)],
                    priority=priority, page=True, alert=preview.alert_id,
                )
            except (MatrixCallFailed, HomeserverUnreachable) as exc:
                # The page itself still reaches them in its own room.
                log.warning("page %s: could not tell %s ahead in %s: %s", page_id, staff, room_id, exc)
                continue
            point(f"page told ahead ({staff})")
            if event_id:
                await ctx.store.add_page_notice(event_id, page_id, room_id, before)
            told.append(staff)
        return told

    async def end_pages_in(self, room_id: str, reason: str) -> int:
        """The conversation is over (a case room closed): its open pages stop escalating.
        Kept on record as exhausted, with no further sends."""
        ctx = self.ctx
        ended = 0
        async with ctx.page_lock:
            for page in await ctx.store.open_pages_in(room_id):
                if page.state != "open":
                    continue
                await ctx.store.save_page(replace(page, state="exhausted", step_deadline=None), [])
                ended += 1
                await ctx.audit.record(
                    actor=ctx.bot, action="appservice.page.ended", object=page.role, room=room_id,
                    outcome="success", process="appservice", details={"page": page.page_id, "reason": reason},
                )
        return ended

    async def tick(self) -> None:
        """Fire every step whose deadline has passed, then send what is owed."""
        ctx = self.ctx
        if ctx.oncall is not None:
            async with ctx.page_lock:
                now = ctx.local_now()
                for page in due(await ctx.store.pages(), now):
                    policy = escalation_for(ctx, page)
                    if policy is None:
                        continue
                    new, actions = on_deadline(page, now, policy, self._resolve(page.role))
                    if actions:
                        await self.outbox.commit(new, actions)
                        await ctx.audit.record(
                            actor=ctx.bot, action="appservice.page.escalated", object=page.role,
                            room=page.room_id, outcome="success", process="appservice",
                            details={"page": page.page_id, "step": new.step, "state": new.state},
                        )
        await self.outbox.flush()
