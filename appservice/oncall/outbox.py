"""The page outbox: a page's state and the Matrix sends its transition implies are committed
together, then sent — the most urgent page first (critical, then urgent, then routine; within
a page in the order decided: carematrix.oncall.send_order). Sending a page brings the paged
people into its room (or pages them in a direct chat with the role when they cannot join); a
send that failed for a reason that may pass is tried again after a back-off, so a restart or
an outage loses no page.

A page committed while a flush is under way with less urgent sends makes that flush start
again from the top after the send in hand, so a critical result never waits behind a backlog
of routine pages. When the homeserver is away (no connection, or a gateway's 502/503/504) the
whole outbox waits out the back-off instead of trying every other send in turn: when it is
back, the most urgent send goes first, not whichever send's own back-off ran out first."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

from appservice.holds import Holds
from appservice.homeserver import HomeserverUnreachable, MatrixCallFailed
from appservice.oncall.context import OncallContext
from appservice.timing import point
from carematrix.oncall.escalation import Action, Page
from carematrix.oncall.send_order import rank, send_order
from carematrix.policy.oncall import role_localpart

log = logging.getLogger("carematrix.appservice.oncall")

# An outbox send that failed for a reason that may pass (HTTP 5xx or 429, the homeserver not
# reachable) is tried again after 1, 2, 4 ... seconds, at most this long apart.
RETRY_MAX_SECONDS = 60
# Answers that say the homeserver itself is away (a reverse proxy in front of it), not that
# this one send failed: like no connection at all, the whole outbox waits.
AWAY_STATUSES = frozenset({502, 503, 504})


class Outbox:
    def __init__(self, ctx: OncallContext) -> None:
        self.ctx = ctx
        self._flush_lock = asyncio.Lock()
        self._retry: dict[str, tuple[int, float]] = {}  # outbox txn -> (failures, monotonic time of the next try)
        self._unreached: dict[str, list[str]] = {}  # page being opened -> who could not be brought in, and why
        # The homeserver is away: nothing is sent before this (monotonic time).
        self._away_until = 0.0
        self._last_stamp = 0
        # The most urgent rank committed since the flush under way read the outbox (None: none).
        self._committed: int | None = None
        self.holds: Holds | None = None  # drills and tests only: {"outbox": true} holds every send

    async def commit(self, page: Page, actions: list[Action]) -> None:
        # Outbox IDs sort in the order committed, two commits in one millisecond too: pages of
        # the same priority are sent first come, first served.
        stamp = self._last_stamp = max(int(time.time() * 1000), self._last_stamp + 1)
        await self.ctx.store.save_page(
            page, [(f"{stamp:013d}-{i:03d}-{uuid.uuid4().hex[:8]}", a) for i, a in enumerate(actions)]
        )
        if actions:
            urgency = max(rank(page.priority), *(rank(a.priority) for a in actions))
            self._committed = urgency if self._committed is None else max(self._committed, urgency)

    def collect_unreached(self, page_id: str, into: list[str]) -> None:
        """While ``page_id`` is being opened, a sentence for each person who could not be
        brought into its room goes to ``into`` (until ``stop_collecting``)."""
        self._unreached[page_id] = into

    def stop_collecting(self, page_id: str) -> None:
        self._unreached.pop(page_id, None)

    async def flush(self) -> None:
        """Send the outbox, most urgent page first; each send carries its outbox ID as
        transaction ID, so a send retried after a crash is not delivered twice. A send that
        failed for a passing reason waits its back-off and is tried again; a refusal is not.
        One flush at a time: two at once (the tick and a message) performed the same page
        twice."""
        async with self._flush_lock:
            await self._flush()

    async def _flush(self) -> None:
        while not await self._flush_once():
            pass

    async def _flush_once(self) -> bool:
        """One pass over the outbox as it is now, in send order. False when a more urgent
        page was committed during the pass: the caller starts again from the top."""
        store = self.ctx.store
        if self.holds is not None and self.holds.outbox.closed:
            for queued in await store.unsent():
                page = await store.page(queued.page_id)
                self.holds.outbox.note(page.event_id if page is not None else queued.page_id)
            return True
        if time.monotonic() < self._away_until:
            return True
        self._committed = None
        for urgency, queued in send_order(await store.unsent()):
            if self._committed is not None and self._committed > urgency:
                return False
            txn_id, page_id, action = queued.key, queued.page_id, queued.item
            failures, not_before = self._retry.get(txn_id, (0, 0.0))
            if time.monotonic() < not_before:
                continue
            page = await store.page(page_id)
            if page is None:
                await store.mark_sent(txn_id)
                continue
            try:
                await self._perform(page, action, txn_id, failures)
            except MatrixCallFailed as exc:
                if exc.transient:
                    self._retry_later(txn_id, failures, f"page {page_id}: {action.kind}", str(exc),
                                      away=exc.status in AWAY_STATUSES)
                    if exc.status in AWAY_STATUSES:
                        return True
                    continue
                log.error("page %s: %s failed, not retried: %s", page_id, action.kind, exc)
            except HomeserverUnreachable as exc:
                self._retry_later(txn_id, failures, f"page {page_id}: {action.kind}", exc.reason, away=True)
                return True
            self._retry.pop(txn_id, None)
            await store.mark_sent(txn_id)
        return True

    def _retry_later(self, txn_id: str, failures: int, what: str, reason: str, *, away: bool = False) -> None:
        delay = min(2**failures, RETRY_MAX_SECONDS)
        self._retry[txn_id] = (failures + 1, time.monotonic() + delay)
        if away:
            # Every other send would fail the same way: the whole outbox waits.
            self._away_until = self._retry[txn_id][1]
            log.warning("%s failed (%s); the outbox waits %d s for the homeserver, then sends the most urgent "
                        "page first", what, reason, delay)
            return
        log.warning("%s failed (%s); trying again in %d s", what, reason, delay)

    async def _perform(self, page: Page, action: Action, txn_id: str, failures: int = 0) -> None:
        ctx = self.ctx
        role_user = ctx.matrix.uid(role_localpart(page.role))
        message = ctx.words(action.message)
        if action.kind == "page":
            unreachable: dict[str, str] = {}
            for staff in action.staff:
                why = await self._invite(page, role_user, staff, failures, action.priority)
                if why is not None:
                    unreachable[staff] = why
            mentions = [ctx.user_id(s) for s in action.staff]
            text = (message or f"呼叫 Page for {page.role}") + "\n已呼叫 Paged: " + ", ".join(ctx.name(s) for s in action.staff)
            async with ctx.sending_page_notice(page.room_id):
                before = datetime.now(UTC)  # at or before the server's timestamp of the notice
                event_id = await ctx.notice(
                    page.room_id, role_user, text, txn_id, mentions=mentions, priority=action.priority, page=True,
                    alert=page.alert_id,
                )
                point(f"page notice sent ({', '.join(action.staff)})")
                if event_id:
                    await ctx.store.add_page_notice(event_id, page.page_id, page.room_id, before)
            for staff, why in unreachable.items():
                await self._page_directly(page, staff, why, text, action.priority, role_user, txn_id)
        elif action.kind in ("acked", "handed_over"):
            told = self._asker(page) + [ctx.user_id(s) for s in action.staff]
            await ctx.notice(page.room_id, role_user, message, txn_id, mentions=told, priority=action.priority)
        elif action.kind in ("tell_sender", "stop"):
            await ctx.notice(page.room_id, role_user, message, txn_id, mentions=[page.sender], priority=action.priority)
        elif action.kind == "gap":
            log.warning("roster gap for %s: %s", page.role, message)
            await ctx.audit.record(
                actor=ctx.bot, action="appservice.roster.gap", object=page.role, room=page.room_id,
                outcome="failure", process="appservice", details={"page": page.page_id},
            )

    async def _page_directly(
        self, page: Page, staff: str, why: str, text: str, priority: str, role_user: str, txn_id: str
    ) -> None:
        """Someone paged who cannot be brought into the page's room (a ward room of a unit they
        do not belong to, say) is paged in a direct chat with the role instead — never left
        mentioned in a room they cannot see. The room is told, and the log says why."""
        ctx = self.ctx
        log.warning("page %s: %s could not be brought into %s (%s); paging in a direct chat", page.page_id, staff, page.room_id, why)
        try:
            room_id = await self._role_dm(page.role, role_user, staff)
            async with ctx.sending_page_notice(room_id):
                before = datetime.now(UTC)
                event_id = await ctx.notice(
                    room_id, role_user, text, f"{txn_id}-dm-{staff}", mentions=[ctx.user_id(staff)], priority=priority,
                    page=True, alert=page.alert_id,
                )
                if event_id:
                    await ctx.store.add_page_notice(event_id, page.page_id, room_id, before)
            note = (
                f"{ctx.name(staff)} 无法加入此房间，已改为在与 {page.role_name or page.role} 的私聊中呼叫。 "
                f"{ctx.name(staff)} cannot join this room ({why}); paged in a direct chat with {page.role_name or page.role} instead."
            )
        except MatrixCallFailed as exc:
            log.error("page %s: %s could not be paged at all: %s", page.page_id, staff, exc)
            note = (
                f"{ctx.name(staff)} 未能被呼叫：无法加入此房间，也无法开启私聊。请打电话联系。 "
                f"{ctx.name(staff)} could NOT be paged: cannot join this room ({why}) and no direct chat could be opened. Call them."
            )
        self._note_unreached(page, note)
        await ctx.notice(page.room_id, role_user, note, f"{txn_id}-note-{staff}", mentions=self._asker(page), priority="urgent")

    async def _role_dm(self, role_id: str, role_user: str, staff: str) -> str:
        ctx = self.ctx
        room_id = await ctx.store.role_dm(role_id, staff)
        if room_id:
            return room_id
        created = await ctx.matrix.call("POST", "/_matrix/client/v3/createRoom", {
            "preset": "trusted_private_chat", "is_direct": True, "invite": [ctx.user_id(staff)],
        }, as_user=role_user)
        room_id = str(created["room_id"])
        await ctx.store.set_role_room(room_id, role_id, ctx.user_id(staff), True)
        await ctx.store.set_role_dm(role_id, staff, room_id)
        return room_id

    async def _invite(self, page: Page, role_user: str, staff: str, failures: int, priority: str) -> str | None:
        """The role account invites one paged person into the page's room. None when they are
        in (or already were); the homeserver's reason when it refuses, and they are paged in a
        direct chat instead. A passing failure (HTTP 5xx or 429, no connection) is said in the
        room once, to whoever asked for the page, and raised: the outbox tries the whole send
        again after a back-off. Someone already in the room (or invited) is not invited
        again: asking is a read, a refused invite is a write the homeserver rejects."""
        ctx = self.ctx
        if await ctx.membership(page.room_id, ctx.user_id(staff), role_user) in ("join", "invite"):
            return None
        try:
            await ctx.matrix.call(
                "POST", f"/_matrix/client/v3/rooms/{quote(page.room_id)}/invite",
                {"user_id": ctx.user_id(staff), "reason": f"值班呼叫 Paged for {page.role}"}, as_user=role_user,
            )
            return None
        except MatrixCallFailed as exc:
            if _already_there(exc):
                return None
            if not exc.transient:
                return str(exc.body.get("error") if isinstance(exc.body, dict) else exc)
            error: Exception = exc
            reason = exc.reason
        except HomeserverUnreachable as exc:
            error, reason = exc, exc.reason
        log.warning("page %s: %s could not be invited to %s yet (%s)", page.page_id, staff, page.room_id, reason)
        text = (
            f"暂时无法将 {ctx.name(staff)} 拉入此房间（{page.role}），正在重试。 "
            f"Could not bring {ctx.name(staff)} into this room for {page.role} yet: {reason}. Trying again."
        )
        self._note_unreached(page, text)
        if failures == 0:
            try:
                await ctx.notice(page.room_id, role_user, text, None, mentions=self._asker(page), priority=priority)
            except MatrixCallFailed as exc:
                log.error("page %s: could not say in %s that %s is not in yet: %s", page.page_id, page.room_id, staff, exc)
        raise error

    def _asker(self, page: Page) -> list[str]:
        """Who asked for the page, to mention when telling them how it goes (not the bot)."""
        return [page.sender] if page.sender.startswith("@") and page.sender != self.ctx.bot else []

    def _note_unreached(self, page: Page, text: str) -> None:
        if page.page_id in self._unreached:
            self._unreached[page.page_id].append(text)


def _already_there(exc: MatrixCallFailed) -> bool:
    text = str(exc.body)
    return exc.errcode == "M_FORBIDDEN" and ("already in the room" in text or "is already joined" in text)
