"""The page outbox: a page's state and the Matrix sends its transition implies are committed
together, then sent in order. Sending a page brings the paged people into its room (or pages
them in a direct chat with the role when they cannot join); a send that failed for a reason
that may pass is tried again after a back-off, so a restart or an outage loses no page."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

from appservice.homeserver import HomeserverUnreachable, MatrixCallFailed
from appservice.oncall.context import OncallContext
from appservice.timing import point
from carematrix.oncall.escalation import Action, Page
from carematrix.policy.oncall import role_localpart

log = logging.getLogger("carematrix.appservice.oncall")

# An outbox send that failed for a reason that may pass (HTTP 5xx or 429, the homeserver not
# reachable) is tried again after 1, 2, 4 ... seconds, at most this long apart.
RETRY_MAX_SECONDS = 60


class Outbox:
    def __init__(self, ctx: OncallContext) -> None:
        self.ctx = ctx
        self._flush_lock = asyncio.Lock()
        self._retry: dict[str, tuple[int, float]] = {}  # outbox txn -> (failures, monotonic time of the next try)
        self._unreached: dict[str, list[str]] = {}  # page being opened -> who could not be brought in, and why

    async def commit(self, page: Page, actions: list[Action]) -> None:
        stamp = int(time.time() * 1000)
        await self.ctx.store.save_page(
            page, [(f"{stamp:013d}-{i:03d}-{uuid.uuid4().hex[:8]}", a) for i, a in enumerate(actions)]
        )

    def collect_unreached(self, page_id: str, into: list[str]) -> None:
        """While ``page_id`` is being opened, a sentence for each person who could not be
        brought into its room goes to ``into`` (until ``stop_collecting``)."""
        self._unreached[page_id] = into

    def stop_collecting(self, page_id: str) -> None:
        self._unreached.pop(page_id, None)

    async def flush(self) -> None:
        """Send the outbox in order; each send carries its outbox ID as transaction ID, so a
        send retried after a crash is not delivered twice. A send that failed for a passing
        reason waits its back-off and is tried again; a refusal is not. One flush at a time:
        two at once (the tick and a message) performed the same page twice."""
        async with self._flush_lock:
            await self._flush()

    async def _flush(self) -> None:
        store = self.ctx.store
        for txn_id, page_id, action in await store.unsent():
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
                    self._retry_later(txn_id, failures, f"page {page_id}: {action.kind}", str(exc))
                    continue
                log.error("page %s: %s failed, not retried: %s", page_id, action.kind, exc)
            except HomeserverUnreachable as exc:
                self._retry_later(txn_id, failures, f"page {page_id}: {action.kind}", exc.reason)
                continue
            self._retry.pop(txn_id, None)
            await store.mark_sent(txn_id)

    def _retry_later(self, txn_id: str, failures: int, what: str, reason: str) -> None:
        delay = min(2**failures, RETRY_MAX_SECONDS)
        self._retry[txn_id] = (failures + 1, time.monotonic() + delay)
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
            text = (message or f"Page for {page.role}") + "\nPaged: " + ", ".join(ctx.name(s) for s in action.staff)
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
        elif action.kind == "acked":
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
            before = datetime.now(UTC)
            event_id = await ctx.notice(
                room_id, role_user, text, f"{txn_id}-dm-{staff}", mentions=[ctx.user_id(staff)], priority=priority,
                page=True, alert=page.alert_id,
            )
            if event_id:
                await ctx.store.add_page_notice(event_id, page.page_id, room_id, before)
            note = f"{ctx.name(staff)} cannot join this room ({why}); paged in a direct chat with {page.role_name or page.role} instead."
        except MatrixCallFailed as exc:
            log.error("page %s: %s could not be paged at all: %s", page.page_id, staff, exc)
            note = f"{ctx.name(staff)} could NOT be paged: cannot join this room ({why}) and no direct chat could be opened. Call them."
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
                {"user_id": ctx.user_id(staff), "reason": f"Paged for {page.role}"}, as_user=role_user,
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
        text = f"Could not bring {ctx.name(staff)} into this room for {page.role} yet: {reason}. Trying again."
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
