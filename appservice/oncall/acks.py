"""Acknowledgements and seen receipts: a reply or reaction to a page notice, ``!ack <id>``,
or (where the role allows it, never for a critical page) reading the notice acknowledges
exactly that page; a read receipt marks the page seen by that person."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from urllib.parse import quote

from appservice.homeserver import MatrixCallFailed
from appservice.oncall.context import OncallContext, first_line
from appservice.oncall.outbox import Outbox
from appservice.oncall.paging import escalation_for
from carematrix.audit import actions as A
from carematrix.intake import reply_target
from carematrix.oncall.escalation import Page, on_ack
from carematrix.policy.oncall import role_localpart
from carematrix.rules.oncall import decide_ack

log = logging.getLogger("carematrix.appservice.oncall")

# How long an acknowledgement of a not-yet-recorded event waits for page notices in flight
# (a send normally takes well under a second; a homeserver in trouble may take longer).
NOTICE_LANDING_SECONDS = 15


class Acknowledgements:
    def __init__(self, ctx: OncallContext, outbox: Outbox) -> None:
        self.ctx = ctx
        self.outbox = outbox

    async def may_acknowledge(self, room_id: str, target_event: str) -> bool:
        """Whether a reply or reaction to ``target_event`` may acknowledge a page: the event
        is a page notice or the message a page was opened for, or a page notice is being sent
        in the room (its event ID not known yet). What the event inbox writes down."""
        store = self.ctx.store
        return (
            self.ctx.page_notice_in_flight(room_id)
            or await store.page_of_notice(target_event) is not None
            or bool(await store.pages_started_by(target_event))
        )

    async def on_reply(self, room_id: str, sender: str, content: dict) -> None:
        """A reply to a page acknowledges that page and no other; an ordinary message
        acknowledges nothing."""
        replied_to = reply_target(content)
        if replied_to:
            await self._ack_event(room_id, sender, replied_to, "reply")

    async def on_reaction(self, room_id: str, sender: str, target_event: str | None) -> None:
        """A reaction acknowledges the one page it was put on."""
        if target_event:
            await self._ack_event(room_id, sender, target_event, "reaction")

    async def _ack_event(self, room_id: str, sender: str, target_event: str, how: str) -> None:
        """A reply or reaction to a page notice acknowledges that page. One to the message a
        page was opened for (the critical result posted in the ward room) counts when it is
        unambiguous: exactly one open page for it paged this person. A reaction may arrive
        before the notice it is on is recorded as its page's (the doctor's client had it
        first): then it waits for the page notices being sent in that room to land."""
        ctx = self.ctx
        staff = ctx.staff_of(sender)
        if staff is None:
            return
        for attempt in range(2):
            async with ctx.page_lock:
                candidates = await self._acknowledged_by(room_id, staff, target_event)
                if candidates or attempt or not ctx.page_notice_in_flight(room_id):
                    await self._ack_candidates(candidates, room_id, sender, staff, how)
                    break
            if not await ctx.page_notices_landed(room_id, NOTICE_LANDING_SECONDS):
                log.warning("%s by %s in %s: page notices there are still being sent after %d s; "
                            "looking it up without them", how, staff, room_id, NOTICE_LANDING_SECONDS)
        await self.outbox.flush()

    async def _acknowledged_by(self, room_id: str, staff: str, target_event: str) -> list[Page]:
        ctx = self.ctx
        page_id = await ctx.store.page_of_notice(target_event)
        if page_id is not None:
            page = await ctx.store.page(page_id)
            return [page] if page is not None else []  # its room, or a direct chat it was sent to
        return [
            p for p in await ctx.store.pages_started_by(target_event)
            if p.room_id == room_id and p.state != "acked" and staff in p.paged
        ]

    async def _ack_candidates(self, candidates: list[Page], room_id: str, sender: str, staff: str, how: str) -> None:
        ctx = self.ctx
        if len(candidates) == 1:
            await self._ack(candidates[0], staff, how)
        elif len(candidates) > 1:
            ids = ", ".join(p.alert_id for p in candidates)
            # Said by the role account of the first page: it is in the room, the bot may not be.
            speaker = ctx.matrix.uid(role_localpart(candidates[0].role))
            try:
                await ctx.notice(
                    room_id, speaker,
                    f"{ctx.name(staff)}：该消息对应 {len(candidates)} 个未结束的呼叫（{ids}），未确认任何呼叫；"
                    f"请对呼叫通知本身回应，或发送 !ack <编号>。 That message has {len(candidates)} open pages "
                    f"({ids}); nothing was acknowledged. React to the page notice itself or send !ack <id>.",
                    None, mentions=[sender],
                )
            except MatrixCallFailed as exc:
                log.warning("could not tell %s that their acknowledgement was ambiguous: %s", staff, exc)

    async def ack_command(self, sender: str, given: str) -> str:
        """``!ack <alert id>``: acknowledges exactly the page with that ID, if it paged you."""
        ctx = self.ctx
        staff = ctx.staff_of(sender)
        verdict = decide_ack(staff)
        if not verdict.allowed or staff is None:
            log.info("policy denial rule=%s user=%s action=ack", verdict.rule, sender)
            await ctx.audit.record(
                actor=sender, action=A.POLICY_DENIED, object=f"ack {given.strip()[:16]}", outcome=A.DENIED,
                rule=verdict.rule, process="appservice",
            )
            return verdict.message()
        # The ID as the page prints it, in brackets, is the ID.
        wanted = given.strip().strip("[]【】()（）").upper()
        async with ctx.page_lock:
            yours = await ctx.store.open_pages_for(staff)
            mine = [p for p in yours if p.alert_id == wanted]
            if not mine:
                ids = ", ".join(f"[{p.alert_id}]" for p in yours) or "无"
                return f"没有发给您的未结束呼叫 [{wanted}]。您的未结束呼叫：{ids}。 " + (
                    f"No open page [{wanted}] was sent to you. Your open pages: "
                ) + (", ".join(f"[{p.alert_id}] {first_line(p.subject)[:60]}" for p in yours) or "none")
            acked = await self._ack(mine[0], staff, "command")
        await self.outbox.flush()
        page = mine[0]
        if not acked:
            return f"您无法确认呼叫 [{wanted}]。 Page [{wanted}] could not be acknowledged by you."
        return (
            f"已确认呼叫 [{page.alert_id}]（{page.role_name or page.role}）。"
            f" Acknowledged page [{page.alert_id}] to {page.role_name or page.role}."
        )

    async def on_read(self, room_id: str, sender: str, event_id: str | None = None) -> None:
        """A read receipt marks the pages whose notice it covers as seen by that person; for
        routine and urgent pages whose role allows ``read`` it also acknowledges them. A
        critical page is never acknowledged by reading."""
        ctx = self.ctx
        staff = ctx.staff_of(sender)
        if staff is None or not event_id:
            return
        if ctx.page_notice_in_flight(room_id):
            # The receipt may cover a notice whose send has not returned yet (see _ack_event).
            await ctx.page_notices_landed(room_id, NOTICE_LANDING_SECONDS)
        async with ctx.page_lock:
            open_pages = [p for p in await ctx.store.open_pages_noticed_in(room_id) if staff in p.paged]
            if not open_pages:
                return
            read_up_to = await self._event_time(room_id, event_id, open_pages[0])
            if read_up_to is None:
                return
            covered = set(await ctx.store.page_notices_in(room_id, read_up_to))
            covered |= {pid for pid in [await ctx.store.page_of_notice(event_id)] if pid}
            now = ctx.local_now()
            for page in open_pages:
                if page.page_id not in covered:
                    continue
                if await ctx.store.mark_seen(page.page_id, staff, now):
                    await ctx.audit.record(
                        actor=ctx.user_id(staff), action="appservice.page.seen", object=page.role,
                        room=room_id, outcome="success", process="appservice", details={"page": page.page_id},
                    )
                await self._ack(page, staff, "read")
        await self.outbox.flush()

    async def _event_time(self, room_id: str, event_id: str, page: Page) -> datetime | None:
        """When the receipted event was sent. Read as the page's role account, which is in
        the page's room and its direct chats; else as the service, whose direct chat with a
        member of staff may have been told of the page ahead (page_ahead)."""
        matrix = self.ctx.matrix
        path = f"/_matrix/client/v3/rooms/{quote(room_id)}/event/{quote(event_id)}"
        try:
            event = await matrix.call("GET", path, as_user=matrix.uid(role_localpart(page.role)))
        except MatrixCallFailed as exc:
            try:
                event = await matrix.call("GET", path)
            except MatrixCallFailed:
                log.warning("read receipt in %s for %s: event not readable (%s)", room_id, event_id, exc)
                return None
        return datetime.fromtimestamp(int(event.get("origin_server_ts", 0)) / 1000, UTC)

    async def _ack(self, page: Page, staff: str, how: str) -> bool:
        ctx = self.ctx
        policy = escalation_for(ctx, page)
        if policy is None:
            return False
        new, actions = on_ack(page, staff, how, ctx.local_now(), policy)
        if not actions:
            return False
        await self.outbox.commit(new, actions)
        await ctx.audit.record(
            actor=ctx.user_id(staff), action="appservice.page.acknowledged", object=page.role,
            room=page.room_id, outcome="success", process="appservice",
            details={"page": page.page_id, "by": how, "step": page.step},
        )
        return True

