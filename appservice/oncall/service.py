"""On-duty role addressing in the appservice: role accounts, roster feeds, pages, escalation,
acknowledgements and quiet hours. The decisions are the pure functions of carematrix.oncall;
this module does the Matrix and database I/O around them.

A page is opened by the first message a member sends in a room with a role account (a DM
to "Cardiology – attending on duty", or a room the role was invited to). Its state and the
Matrix sends each transition implies are committed together (an outbox), then sent; a
restart resumes open pages at their deadlines and sends what was not yet sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from appservice.audit_client import AuditClient
from appservice.homeserver import Homeserver, HomeserverUnreachable, MatrixCallFailed
from appservice.oncall import quiet_hours
from appservice.oncall.clock import Clock
from appservice.oncall.store import OncallStore
from appservice.oncall.swap import swap
from appservice.timing import point, step
from bridges.roster import FeedConfig, FeedInvalid, parse_feed
from bridges.roster.config import DEFAULT_COLUMNS
from carematrix import identity
from carematrix.audit import actions as A
from carematrix.oncall.escalation import (
    Action,
    EscalationPolicy,
    Page,
    due,
    on_ack,
    on_deadline,
    open_page,
    page_text,
    plan,
)
from carematrix.oncall.model import Override
from carematrix.oncall.roster import Roster
from carematrix.oncall.targets import resolver
from carematrix.policy.holder import PolicyHolder
from carematrix.policy.model import Policy
from carematrix.policy.oncall import OncallPolicy, RoleAddress, role_localpart
from carematrix.policy.org import Staff, staff_localpart
from carematrix.rules import Verdict
from carematrix.rules.oncall import decide_cover, decide_swap
from carematrix.rules.protection import PAGE_FLAG, PRIORITY_FIELD

log = logging.getLogger("carematrix.appservice.oncall")

ROSTER_PAST = timedelta(days=2)
LEAD_TIMEOUT_SECONDS = 300  # a page's lead (e.g. the ordering doctor) before the role's chain
ROSTER_AHEAD = timedelta(days=35)
ADMIN_WAIT_WARN_SECONDS = 300.0


# An outbox send that failed for a reason that may pass (HTTP 5xx or 429, the homeserver not
# reachable) is tried again after 1, 2, 4 ... seconds, at most this long apart.
RETRY_MAX_SECONDS = 60


class NoAccountYet(Exception):
    """A rostered member of staff has no Matrix account (yet): org sync creates it."""


class OncallService:
    def __init__(
        self,
        store: OncallStore,
        holder: PolicyHolder,
        matrix: Homeserver,
        bot_user_id: str,
        audit: AuditClient,
        clock: Clock,
    ) -> None:
        self.store = store
        self.holder = holder
        self.matrix = matrix
        self.bot = bot_user_id
        self.audit = audit
        self.clock = clock
        self._roster = Roster([])
        self._feed_checked: dict[str, float] = {}
        self._feed_stamps: dict[str, tuple[int, int] | None] = {}
        self._lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._user_tokens: dict[str, str] = {}
        self._quiet_applied: dict[str, bool] = {}
        self.feed_errors: dict[str, str] = {}
        self.roles_named = False
        self._is_admin = False
        self._registered: set[str] = set()
        self._admin_waiting_since: float | None = None
        self._admin_warned = False
        self._retry: dict[str, tuple[int, float]] = {}  # outbox txn -> (failures, monotonic time of the next try)
        self._unreached: dict[str, list[str]] = {}  # page being opened -> who could not be brought in, and why

    # -- policy and roster --------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        return self.holder.current

    @property
    def oncall(self) -> OncallPolicy | None:
        return self.policy.oncall

    def role_of_user(self, user_id: str) -> RoleAddress | None:
        oncall = self.oncall
        if oncall is None or not identity.is_role_account(user_id, self.matrix.server):
            return None
        return oncall.role_for_localpart(identity.localpart(user_id))

    def user_id(self, staff_number: str) -> str:
        return self.matrix.uid(staff_localpart(staff_number))

    def person(self, user_id: str) -> Staff | None:
        """The staff record behind a local Matrix ID, or None."""
        local = identity.local_localpart(user_id, self.matrix.server)
        return self.policy.staff_for_localpart(local) if local is not None else None

    def staff_of(self, user_id: str) -> str | None:
        person = self.person(user_id)
        return person.staff_number if person else None

    def name(self, staff_number: str) -> str:
        """"李伟 Li Wei (D1001)" for a staff number; anything else comes back unchanged."""
        person = self.policy.staff_for_localpart(staff_localpart(staff_number))
        if person is None or person.staff_number != staff_number:
            return staff_number
        return f"{person.name} ({staff_number})"

    def _words(self, text: str) -> str:
        """Staff numbers in the state machine's messages become names people recognise."""
        return re.sub(r"\b[A-Za-z0-9][A-Za-z0-9._-]*\b", lambda m: self.name(m.group(0)), text)

    async def setup(self) -> None:
        await self.reload_roster()
        await self.ensure_role_accounts()

    async def reload_roster(self) -> None:
        self._roster = Roster(await self.store.shifts(), await self.store.overrides())

    async def ensure_role_accounts(self) -> None:
        """Every role address is a Matrix account in the appservice's namespace, named so
        staff find it in the user directory."""
        oncall = self.oncall
        if oncall is None:
            return
        for role in oncall.roles.values():
            uid = self.matrix.uid(role.localpart)
            await self._register_once(uid, role.localpart)
            try:
                await self.matrix.call("PUT", f"/_synapse/admin/v2/users/{quote(uid)}", {"displayname": role.name})
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
        try:
            await self.matrix.call("GET", f"/_matrix/client/v3/profile/{quote(uid)}")
        except MatrixCallFailed as exc:
            if exc.status != 404:
                raise
            try:
                await self.matrix.call(
                    "POST", "/_matrix/client/v3/register",
                    {"type": "m.login.application_service", "username": localpart},
                )
            except MatrixCallFailed as exc:
                if exc.errcode != "M_USER_IN_USE":
                    raise
        self._registered.add(uid)

    async def refresh_feeds(self, policy_dir: Path, force: bool = False) -> None:
        oncall = self.oncall
        if oncall is None:
            return
        now = self.clock.now()
        changed = False
        for feed in oncall.feeds:
            last = self._feed_checked.get(feed.id, 0.0)
            stamp = self._file_stamp(policy_dir, feed.path)
            edited = stamp is not None and stamp != self._feed_stamps.get(feed.id)
            if not force and not edited and time.monotonic() - last < feed.refresh_seconds:
                continue
            self._feed_stamps[feed.id] = stamp
            self._feed_checked[feed.id] = time.monotonic()
            source = feed.url or feed.path or feed.id
            try:
                data = await self._read_feed(policy_dir, feed.path, feed.url)
                digest = hashlib.sha256(data).hexdigest()
                if not force and digest == await self.store.feed_digest(feed.id):
                    # Back to the content in force (e.g. a broken edit was reverted).
                    self.feed_errors.pop(feed.id, None)
                    continue
                config = FeedConfig(
                    timezone=oncall.timezone, roles=feed.roles, staff=feed.staff,
                    known_staff=frozenset(p.staff_number for p in self.policy.staff),
                    known_roles=frozenset(oncall.roles), role_from=feed.role_from,  # type: ignore[arg-type]
                    encoding=feed.encoding, columns=feed.columns or DEFAULT_COLUMNS,
                )
                # In a thread: a large roster takes a good part of a second to parse, and every
                # policy edit re-reads them all (MLLP ACKs and escalations must not wait).
                shifts = await asyncio.to_thread(
                    parse_feed, feed.kind, data, source, config, (now - ROSTER_PAST, now + ROSTER_AHEAD)
                )
            except (TimeoutError, OSError, aiohttp.ClientError, FeedInvalid, ValueError) as exc:
                message = str(exc) if isinstance(exc, FeedInvalid | ValueError) else f"{source}: cannot read the feed ({exc})"
                await self._feed_problem(feed.id, message, now)
                continue
            await self.store.replace_feed(feed.id, shifts, digest, now)
            self.feed_errors.pop(feed.id, None)
            changed = True
            log.info("roster feed %s: %d shifts in force", feed.id, len(shifts))
            await self.audit.record(
                actor=self.bot, action="appservice.roster.loaded", object=feed.id, outcome="success",
                process="appservice", details={"shifts": len(shifts), "digest": digest[:16]},
            )
        if changed:
            await self.reload_roster()

    @staticmethod
    def _file_stamp(policy_dir: Path, path: str | None) -> tuple[int, int] | None:
        """A file feed is re-read as soon as it changes, not only every ``refresh``."""
        if path is None:
            return None
        try:
            st = (policy_dir / path).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def _read_feed(self, policy_dir: Path, path: str | None, url: str | None) -> bytes:
        if path is not None:
            return (policy_dir / path).read_bytes()
        async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as resp:  # type: ignore[arg-type]
            resp.raise_for_status()
            return await resp.read()

    async def _feed_problem(self, feed_id: str, message: str, now: datetime) -> None:
        """The previous roster stays in force; the admins hear about it once per new error."""
        if self.feed_errors.get(feed_id) == message:
            return
        self.feed_errors[feed_id] = message
        log.error("roster feed %s rejected, previous roster kept:\n%s", feed_id, message)
        await self.store.feed_failed(feed_id, message, now)
        await self.audit.record(
            actor=self.bot, action="appservice.roster.rejected", object=feed_id, outcome="failure",
            process="appservice", details={"errors": message.count("\n") + 1},
        )
        room = self.oncall.admin_room if self.oncall else None
        if room:
            try:
                room_id = (await self.matrix.call("GET", f"/_matrix/client/v3/directory/room/{quote('#' + room + ':' + self.matrix.server)}"))["room_id"]
                await self._notice(room_id, self.bot, f"Roster feed '{feed_id}' was rejected; the previous roster stays in force.\n{message}", None)
            except MatrixCallFailed as exc:
                log.error("could not tell the admin room about feed %s: %s", feed_id, exc)

    async def query_alias(self, alias: str) -> dict | None:
        """``#role-cardiology-attending`` resolves to the role's desk room, created the first
        time anyone looks it up (the appservice owns the ``#role-…`` aliases). Joining it and
        writing pages the role like a DM does; a DM keeps the conversation private."""
        localpart = identity.localpart(alias) if alias.startswith("#") else ""
        role = self.oncall.role_for_localpart(localpart) if self.oncall else None
        if role is None:
            return None
        role_user = self.matrix.uid(role.localpart)
        created = await self.matrix.call(
            "POST", "/_matrix/client/v3/createRoom",
            {
                "room_alias_name": localpart, "preset": "public_chat", "name": role.name,
                "topic": f"Messages here page whoever is {role.name} now. For a private conversation, message the role directly.",
            },
            as_user=role_user,
        )
        await self.store.set_role_room(created["room_id"], role.id, role_user, True)
        log.info("created the desk room %s for %s", alias, role.id)
        # Synapse only needs a 200 and then looks the alias up itself; the body must not be
        # empty for mautrix, which answers 404 for a falsy result.
        return {"room_id": created["room_id"]}

    # -- Matrix events ------------------------------------------------------------------

    async def on_member(self, room_id: str, sender: str, state_key: str, membership: str, direct: bool = False) -> bool:
        """A role account invited somewhere joins and explains itself. True if handled."""
        role = self.role_of_user(state_key)
        if role is None or membership != "invite":
            return False
        if identity.server_name(sender) != self.matrix.server:
            return True
        # Recorded before joining: the requester's first message may arrive right after.
        await self.store.set_role_room(room_id, role.id, sender, direct)
        await self.matrix.call("POST", f"/_matrix/client/v3/join/{quote(room_id)}", {}, as_user=state_key)
        holders = self._roster.on_duty(role.id, self.clock.now())
        who = ", ".join(self.name(s) for s in holders) or "nobody (a roster gap: your message will go to the fallback)"
        how = "Write your message here" if direct else f"Mention {role.name} in a message"
        await self._notice(
            room_id, state_key, f"This is {role.name}. On duty now: {who}. {how}: it pages whoever is on duty.", None
        )
        return True

    async def on_message(self, room_id: str, sender: str, event_id: str, content: dict | None = None) -> None:
        """In a direct chat with a role every message pages it; in a group room only a
        message that mentions the role does. A reply to a page acknowledges that page and no
        other; an ordinary message acknowledges nothing."""
        if identity.is_system_account(sender, self.bot, self.matrix.server):
            return
        replied_to = _reply_target(content or {})
        if replied_to:
            await self._ack_event(room_id, sender, replied_to, "reply")
        roles = await self.store.role_rooms(room_id)
        if not roles:
            return
        mentioned = set((content or {}).get("m.mentions", {}).get("user_ids", []) or [])
        body = str((content or {}).get("body", ""))
        opened: list[Page] = []
        async with self._lock:
            open_pages = await self.store.open_pages_in(room_id)
            staff = self.staff_of(sender)
            busy = {p.role for p in open_pages}
            oncall = self.oncall
            for role_id, direct in roles:
                role = oncall.roles.get(role_id) if oncall else None
                if role is None or role_id in busy or (staff is not None and any(staff in p.paged for p in open_pages)):
                    continue
                uid = self.matrix.uid(role.localpart)
                if not (direct or uid in mentioned or uid in body or role.name in body):
                    continue
                priority = str((content or {}).get(PRIORITY_FIELD) or "urgent")
                page, actions = open_page(
                    uuid.uuid4().hex, role.id, sender, room_id, event_id, self.local_now(),
                    role.escalation, self._resolve(role.id),
                    priority=priority if priority in ("routine", "urgent", "critical") else "urgent",
                    subject=f"{self._display(sender)}: {_first_line(body)}", role_name=role.name,
                )
                await self._commit(page, actions)
                opened.append(page)
        for page in opened:
            await self.audit.record(
                actor=sender, action="appservice.page.opened", object=page.role, room=room_id, outcome="success",
                process="appservice", details={"page": page.page_id, "paged": list(page.paged)},
            )
        await self.flush()

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
        oncall = self.oncall
        role = oncall.roles.get(role_id) if oncall else None
        if role is None:
            return None
        existing = await self.store.page(page_id)
        if existing is not None:
            return existing
        with step("page: role account into the room"):
            await self.ensure_in_room(role, room_id)
        await self.store.set_role_room(room_id, role.id, sender, False)
        if unreached is not None:
            self._unreached[page_id] = unreached
        try:
            with step("page: opened (lock wait, commit)"):
                async with self._lock:
                    page, actions = open_page(
                        page_id, role.id, sender, room_id, event_id, self.local_now(),
                        plan(role.escalation, lead, LEAD_TIMEOUT_SECONDS), self._resolve(role.id),
                        priority=priority, subject=subject, lead=lead, role_name=role.name,
                    )
                    await self._commit(page, actions)
            with step("page: audit record"):
                await self.audit.record(
                    actor=sender, action="appservice.page.opened", object=role.id, room=room_id, outcome="success",
                    process="appservice", details={"page": page_id, "paged": list(page.paged), "by": "hospital system"},
                )
            with step("page: outbox flush"):
                await self.flush()
        finally:
            self._unreached.pop(page_id, None)
        return page

    async def ensure_in_room(self, role: RoleAddress, room_id: str) -> None:
        """The bot (which created the hospital's standard rooms) invites the role account,
        which joins. Usually it is in already, which a read of its membership tells without
        any write (an invite to a member is refused only after the homeserver checked it)."""
        role_user = self.matrix.uid(role.localpart)
        membership = await self._membership(room_id, role_user, role_user)
        if membership == "join":
            return
        if membership != "invite":
            try:
                await self.matrix.call("POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/invite", {"user_id": role_user})
            except MatrixCallFailed as exc:
                log.debug("invite of %s to %s: %s", role_user, room_id, exc)
        await self.matrix.call("POST", f"/_matrix/client/v3/join/{quote(room_id)}", {}, as_user=role_user)

    async def _membership(self, room_id: str, user_id: str, as_user: str) -> str | None:
        """``user_id``'s membership of the room as ``as_user`` sees it; None if it cannot be
        read (not in the room, or the homeserver did not answer: the caller then acts)."""
        try:
            member = await self.matrix.call(
                "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.member/{quote(user_id)}",
                as_user=as_user,
            )
        except (MatrixCallFailed, HomeserverUnreachable):
            return None
        return str(member.get("membership") or "") or None

    def first_paged(self, role_id: str, lead: str | None = None) -> tuple[str, ...]:
        """The staff numbers a page to ``role_id`` (with ``lead``) pages at once, as the
        escalation would decide now: whom to bring into a room being made for the page."""
        role = self.oncall.roles.get(role_id) if self.oncall else None
        if role is None:
            return ()
        preview, _ = open_page(
            "preview", role.id, self.bot, "", "", self.local_now(), plan(role.escalation, lead, LEAD_TIMEOUT_SECONDS),
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
        role = self.oncall.roles.get(role_id) if self.oncall else None
        if role is None or await self.store.page(page_id) is not None:
            return []  # no such role; or the page is open already (a redelivery): told then
        preview, _ = open_page(
            page_id, role.id, self.bot, "", "", self.local_now(), plan(role.escalation, lead, LEAD_TIMEOUT_SECONDS),
            self._resolve(role.id), priority=priority, subject=subject, lead=lead, role_name=role.name,
        )
        told = []
        for staff, room_id in rooms.items():
            text = page_text(preview) + (f"\n{note}" if note else "")
            before = datetime.now(UTC)
            try:
                event_id = await self._notice(
                    room_id, self.bot, text, f"{page_id}-ahead-{staff}", mentions=[self.user_id(staff)],
                    priority=priority, page=True, alert=preview.alert_id,
                )
            except (MatrixCallFailed, HomeserverUnreachable) as exc:
                # The page itself still reaches them in its own room.
                log.warning("page %s: could not tell %s ahead in %s: %s", page_id, staff, room_id, exc)
                continue
            point(f"page told ahead ({staff})")
            if event_id:
                await self.store.add_page_notice(event_id, page_id, room_id, before)
            told.append(staff)
        return told

    async def on_reaction(self, room_id: str, sender: str, target_event: str | None) -> None:
        """A reaction acknowledges the one page it was put on."""
        if target_event:
            await self._ack_event(room_id, sender, target_event, "reaction")

    async def _ack_event(self, room_id: str, sender: str, target_event: str, how: str) -> None:
        """A reply or reaction to a page notice acknowledges that page. One to the message a
        page was opened for (the critical result posted in the ward room) counts when it is
        unambiguous: exactly one open page for it paged this person."""
        staff = self.staff_of(sender)
        if staff is None:
            return
        async with self._lock:
            page_id = await self.store.page_of_notice(target_event)
            if page_id is not None:
                page = await self.store.page(page_id)
                candidates = [page] if page is not None else []  # its room, or a direct chat it was sent to
            else:
                candidates = [
                    p for p in await self.store.pages_started_by(target_event)
                    if p.room_id == room_id and p.state != "acked" and staff in p.paged
                ]
            if len(candidates) == 1:
                await self._ack(candidates[0], staff, how)
            elif len(candidates) > 1:
                ids = ", ".join(p.alert_id for p in candidates)
                # Said by the role account of the first page: it is in the room, the bot may not be.
                speaker = self.matrix.uid(role_localpart(candidates[0].role))
                try:
                    await self._notice(
                        room_id, speaker,
                        f"{self.name(staff)}: that message has {len(candidates)} open pages ({ids}); "
                        f"nothing was acknowledged. React to the page notice itself or send !ack <id>.",
                        None, mentions=[sender],
                    )
                except MatrixCallFailed as exc:
                    log.warning("could not tell %s that their acknowledgement was ambiguous: %s", staff, exc)
        await self.flush()

    async def ack_command(self, sender: str, given: str) -> str:
        """``!ack <alert id>``: acknowledges exactly the page with that ID, if it paged you."""
        staff = self.staff_of(sender)
        if staff is None:
            return "Only staff can acknowledge pages."
        wanted = given.strip().upper()
        async with self._lock:
            yours = await self.store.open_pages_for(staff)
            mine = [p for p in yours if p.alert_id == wanted]
            if not mine:
                return f"No open page [{wanted}] was sent to you. Your open pages: " + (
                    ", ".join(f"[{p.alert_id}] {_first_line(p.subject)[:60]}" for p in yours) or "none"
                )
            acked = await self._ack(mine[0], staff, "command")
        await self.flush()
        page = mine[0]
        if not acked:
            return f"Page [{wanted}] could not be acknowledged by you."
        return f"Acknowledged page [{page.alert_id}] to {page.role_name or page.role}."

    async def on_read(self, room_id: str, sender: str, event_id: str | None = None) -> None:
        """A read receipt marks the pages whose notice it covers as seen by that person; for
        routine and urgent pages whose role allows ``read`` it also acknowledges them. A
        critical page is never acknowledged by reading."""
        staff = self.staff_of(sender)
        if staff is None or not event_id:
            return
        async with self._lock:
            open_pages = [p for p in await self.store.open_pages_noticed_in(room_id) if staff in p.paged]
            if not open_pages:
                return
            read_up_to = await self._event_time(room_id, event_id, open_pages[0])
            if read_up_to is None:
                return
            covered = set(await self.store.page_notices_in(room_id, read_up_to))
            covered |= {pid for pid in [await self.store.page_of_notice(event_id)] if pid}
            now = self.local_now()
            for page in open_pages:
                if page.page_id not in covered:
                    continue
                if await self.store.mark_seen(page.page_id, staff, now):
                    await self.audit.record(
                        actor=self.user_id(staff), action="appservice.page.seen", object=page.role,
                        room=room_id, outcome="success", process="appservice", details={"page": page.page_id},
                    )
                await self._ack(page, staff, "read")
        await self.flush()

    async def _event_time(self, room_id: str, event_id: str, page: Page) -> datetime | None:
        """When the receipted event was sent. Read as the page's role account, which is in
        the page's room and its direct chats; else as the service, whose direct chat with a
        member of staff may have been told of the page ahead (page_ahead)."""
        path = f"/_matrix/client/v3/rooms/{quote(room_id)}/event/{quote(event_id)}"
        try:
            event = await self.matrix.call("GET", path, as_user=self.matrix.uid(role_localpart(page.role)))
        except MatrixCallFailed as exc:
            try:
                event = await self.matrix.call("GET", path)
            except MatrixCallFailed:
                log.warning("read receipt in %s for %s: event not readable (%s)", room_id, event_id, exc)
                return None
        return datetime.fromtimestamp(int(event.get("origin_server_ts", 0)) / 1000, UTC)

    def _escalation(self, page: Page) -> EscalationPolicy | None:
        role = self.oncall.roles.get(page.role) if self.oncall else None
        return plan(role.escalation, page.lead, LEAD_TIMEOUT_SECONDS) if role is not None else None

    async def _ack(self, page: Page, staff: str, how: str) -> bool:
        policy = self._escalation(page)
        if policy is None:
            return False
        new, actions = on_ack(page, staff, how, self.local_now(), policy)
        if not actions:
            return False
        await self._commit(new, actions)
        await self.audit.record(
            actor=self.user_id(staff), action="appservice.page.acknowledged", object=page.role,
            room=page.room_id, outcome="success", process="appservice",
            details={"page": page.page_id, "by": how, "step": page.step},
        )
        return True

    def local_now(self) -> datetime:
        """Now in the hospital's time zone: every time a person reads is local."""
        return self.clock.now().astimezone(_zone(self.oncall.timezone if self.oncall else "UTC"))

    def _display(self, user_id: str) -> str:
        person = self.person(user_id)
        return f"{person.name} ({person.staff_number})" if person else user_id

    async def end_pages_in(self, room_id: str, reason: str) -> int:
        """The conversation is over (a case room closed): its open pages stop escalating.
        Kept on record as exhausted, with no further sends."""
        ended = 0
        async with self._lock:
            for page in await self.store.open_pages_in(room_id):
                if page.state != "open":
                    continue
                await self.store.save_page(replace(page, state="exhausted", step_deadline=None), [])
                ended += 1
                await self.audit.record(
                    actor=self.bot, action="appservice.page.ended", object=page.role, room=room_id,
                    outcome="success", process="appservice", details={"page": page.page_id, "reason": reason},
                )
        return ended

    # -- escalation ---------------------------------------------------------------------

    def _resolve(self, role_id: str) -> Any:
        return resolver(self._roster, role_id, self.oncall.pools if self.oncall else {})

    async def tick(self) -> None:
        """Fire every step whose deadline has passed, then send what is owed."""
        oncall = self.oncall
        if oncall is not None:
            async with self._lock:
                now = self.local_now()
                for page in due(await self.store.pages(), now):
                    policy = self._escalation(page)
                    if policy is None:
                        continue
                    new, actions = on_deadline(page, now, policy, self._resolve(page.role))
                    if actions:
                        await self._commit(new, actions)
                        await self.audit.record(
                            actor=self.bot, action="appservice.page.escalated", object=page.role,
                            room=page.room_id, outcome="success", process="appservice",
                            details={"page": page.page_id, "step": new.step, "state": new.state},
                        )
        await self.flush()

    async def _commit(self, page: Page, actions: list[Action]) -> None:
        stamp = int(time.time() * 1000)
        await self.store.save_page(
            page, [(f"{stamp:013d}-{i:03d}-{uuid.uuid4().hex[:8]}", a) for i, a in enumerate(actions)]
        )

    async def flush(self) -> None:
        """Send the outbox in order; each send carries its outbox ID as transaction ID, so a
        send retried after a crash is not delivered twice. A send that failed for a passing
        reason waits its back-off and is tried again; a refusal is not. One flush at a time:
        two at once (the tick and a message) performed the same page twice."""
        async with self._flush_lock:
            await self._flush()

    async def _flush(self) -> None:
        for txn_id, page_id, action in await self.store.unsent():
            failures, not_before = self._retry.get(txn_id, (0, 0.0))
            if time.monotonic() < not_before:
                continue
            page = await self.store.page(page_id)
            if page is None:
                await self.store.mark_sent(txn_id)
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
            await self.store.mark_sent(txn_id)

    def _retry_later(self, txn_id: str, failures: int, what: str, reason: str) -> None:
        delay = min(2**failures, RETRY_MAX_SECONDS)
        self._retry[txn_id] = (failures + 1, time.monotonic() + delay)
        log.warning("%s failed (%s); trying again in %d s", what, reason, delay)

    async def _perform(self, page: Page, action: Action, txn_id: str, failures: int = 0) -> None:
        role_user = self.matrix.uid(role_localpart(page.role))
        message = self._words(action.message)
        if action.kind == "page":
            unreachable: dict[str, str] = {}
            for staff in action.staff:
                why = await self._invite(page, role_user, staff, failures, action.priority)
                if why is not None:
                    unreachable[staff] = why
            mentions = [self.user_id(s) for s in action.staff]
            text = (message or f"Page for {page.role}") + "\nPaged: " + ", ".join(self.name(s) for s in action.staff)
            before = datetime.now(UTC)  # at or before the server's timestamp of the notice
            event_id = await self._notice(
                page.room_id, role_user, text, txn_id, mentions=mentions, priority=action.priority, page=True,
                alert=page.alert_id,
            )
            point(f"page notice sent ({', '.join(action.staff)})")
            if event_id:
                await self.store.add_page_notice(event_id, page.page_id, page.room_id, before)
            for staff, why in unreachable.items():
                await self._page_directly(page, staff, why, text, action.priority, role_user, txn_id)
        elif action.kind == "acked":
            told = ([page.sender] if page.sender.startswith("@") and page.sender != self.bot else [])
            told += [self.user_id(s) for s in action.staff]
            await self._notice(page.room_id, role_user, message, txn_id, mentions=told, priority=action.priority)
        elif action.kind in ("tell_sender", "stop"):
            await self._notice(page.room_id, role_user, message, txn_id, mentions=[page.sender], priority=action.priority)
        elif action.kind == "gap":
            log.warning("roster gap for %s: %s", page.role, message)
            await self.audit.record(
                actor=self.bot, action="appservice.roster.gap", object=page.role, room=page.room_id,
                outcome="failure", process="appservice", details={"page": page.page_id},
            )

    async def _page_directly(
        self, page: Page, staff: str, why: str, text: str, priority: str, role_user: str, txn_id: str
    ) -> None:
        """Someone paged who cannot be brought into the page's room (a ward room of a unit they
        do not belong to, say) is paged in a direct chat with the role instead — never left
        mentioned in a room they cannot see. The room is told, and the log says why."""
        log.warning("page %s: %s could not be brought into %s (%s); paging in a direct chat", page.page_id, staff, page.room_id, why)
        try:
            room_id = await self._role_dm(page.role, role_user, staff)
            before = datetime.now(UTC)
            event_id = await self._notice(
                room_id, role_user, text, f"{txn_id}-dm-{staff}", mentions=[self.user_id(staff)], priority=priority,
                page=True, alert=page.alert_id,
            )
            if event_id:
                await self.store.add_page_notice(event_id, page.page_id, room_id, before)
            note = f"{self.name(staff)} cannot join this room ({why}); paged in a direct chat with {page.role_name or page.role} instead."
        except MatrixCallFailed as exc:
            log.error("page %s: %s could not be paged at all: %s", page.page_id, staff, exc)
            note = f"{self.name(staff)} could NOT be paged: cannot join this room ({why}) and no direct chat could be opened. Call them."
        self._collect_unreached(page, note)
        await self._notice(page.room_id, role_user, note, f"{txn_id}-note-{staff}", mentions=self._asker(page), priority="urgent")

    async def _role_dm(self, role_id: str, role_user: str, staff: str) -> str:
        room_id = await self.store.role_dm(role_id, staff)
        if room_id:
            return room_id
        created = await self.matrix.call("POST", "/_matrix/client/v3/createRoom", {
            "preset": "trusted_private_chat", "is_direct": True, "invite": [self.user_id(staff)],
        }, as_user=role_user)
        room_id = str(created["room_id"])
        await self.store.set_role_room(room_id, role_id, self.user_id(staff), True)
        await self.store.set_role_dm(role_id, staff, room_id)
        return room_id

    async def _invite(self, page: Page, role_user: str, staff: str, failures: int, priority: str) -> str | None:
        """The role account invites one paged person into the page's room. None when they are
        in (or already were); the homeserver's reason when it refuses, and they are paged in a
        direct chat instead. A passing failure (HTTP 5xx or 429, no connection) is said in the
        room once, to whoever asked for the page, and raised: the outbox tries the whole send
        again after a back-off. Someone already in the room (or invited) is not invited
        again: asking is a read, a refused invite is a write the homeserver rejects."""
        if await self._membership(page.room_id, self.user_id(staff), role_user) in ("join", "invite"):
            return None
        try:
            await self.matrix.call(
                "POST", f"/_matrix/client/v3/rooms/{quote(page.room_id)}/invite",
                {"user_id": self.user_id(staff), "reason": f"Paged for {page.role}"}, as_user=role_user,
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
        text = f"Could not bring {self.name(staff)} into this room for {page.role} yet: {reason}. Trying again."
        self._collect_unreached(page, text)
        if failures == 0:
            try:
                await self._notice(page.room_id, role_user, text, None, mentions=self._asker(page), priority=priority)
            except MatrixCallFailed as exc:
                log.error("page %s: could not say in %s that %s is not in yet: %s", page.page_id, page.room_id, staff, exc)
        raise error

    def _asker(self, page: Page) -> list[str]:
        """Who asked for the page, to mention when telling them how it goes (not the bot)."""
        return [page.sender] if page.sender.startswith("@") and page.sender != self.bot else []

    def _collect_unreached(self, page: Page, text: str) -> None:
        if page.page_id in self._unreached:
            self._unreached[page.page_id].append(text)

    async def _notice(
        self, room_id: str, sender: str, text: str, txn_id: str | None, *, mentions: list[str] | None = None,
        priority: str = "routine", page: bool = False, alert: str | None = None,
    ) -> str:
        content: dict[str, Any] = {"msgtype": "m.notice", "body": text, PRIORITY_FIELD: priority}
        if mentions:
            content["m.mentions"] = {"user_ids": mentions}
        if page:
            content[PAGE_FLAG] = True
        if alert:
            content[ALERT_FIELD] = alert
        txn = txn_id or uuid.uuid4().hex
        sent = await self.matrix.call(
            "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/{txn}", content,
            as_user=None if sender == self.bot else sender,
        )
        return str(sent.get("event_id", "")) if isinstance(sent, dict) else ""

    # -- overrides and listing ----------------------------------------------------------

    def local_today(self, hour: int, minute: int) -> datetime:
        """HH:MM today in the hospital's time zone (tomorrow if that has passed)."""
        zone = _zone(self.oncall.timezone if self.oncall else "UTC")
        now = self.clock.now().astimezone(zone)
        at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return at if at > now else at + timedelta(days=1)

    def listing(self, unit: str | None) -> str:
        oncall = self.oncall
        if oncall is None:
            return "This hospital has no on-call roles configured."
        now = self.clock.now()
        lines = []
        for role in sorted(oncall.roles.values(), key=lambda r: r.id):
            if unit and not role.id.startswith(unit + "/") and role.unit != unit:
                continue
            holders = self._roster.on_duty(role.id, now)
            change = self._roster.next_change(role.id, now)
            nxt = ""
            if change is not None:
                after = self._roster.on_duty(role.id, change)
                local = change.astimezone(_zone(oncall.timezone)).strftime("%a %H:%M")
                nxt = f"; from {local}: " + (", ".join(self.name(s) for s in after) or "nobody")
            lines.append(f"{role.name}: " + (", ".join(self.name(s) for s in holders) or "NOBODY (roster gap)") + nxt)
        return "\n".join(lines) or f"No on-call roles for '{unit}'."

    async def cover(self, requester: str, role_id: str, until: datetime, staff_number: str) -> str:
        oncall = self.oncall
        person = self.person(requester)
        if oncall is None or role_id not in oncall.roles:
            return f"Unknown role '{role_id}'."
        now = self.clock.now()
        holders = self._roster.on_duty(role_id, now)
        verdict = decide_cover(person, oncall.roles[role_id].name, holders, oncall.overrides_by)
        if not verdict.allowed:
            return await self._refuse(requester, verdict, f"cover {role_id}")
        replaces = holders[0] if holders else None
        override = Override(role_id, staff_number, now, until, replaces, person.staff_number if person else "?", "cover")
        await self.store.add_override(uuid.uuid4().hex, override)
        await self.reload_roster()
        await self.audit.record(
            actor=requester, action="appservice.roster.cover", object=role_id, outcome="success", process="appservice",
            details={"staff": staff_number, "replaces": replaces, "until": until.isoformat()},
        )
        return f"{self.name(staff_number)} covers {oncall.roles[role_id].name} until {until.astimezone(_zone(oncall.timezone)):%H:%M}."

    async def _refuse(self, requester: str, verdict: Verdict, action: str) -> str:
        """A refused command is on record with its rule, like every refusal; the reply
        names the rule."""
        log.info("policy denial rule=%s user=%s action=%s", verdict.rule, requester, action)
        await self.audit.record(
            actor=requester, action=A.POLICY_DENIED, object=action, outcome=A.DENIED, rule=verdict.rule,
            process="appservice",
        )
        return verdict.message()

    async def swap_shifts(self, requester: str, role_id: str, other: str) -> str:
        """The requester's next shift of ``role_id`` (the current one if on it) and the
        other person's next one are traded."""
        oncall = self.oncall
        person = self.person(requester)
        if oncall is None or role_id not in oncall.roles:
            return f"Unknown role '{role_id}'."
        verdict = decide_swap(person)
        if person is None or not verdict.allowed:
            return await self._refuse(requester, verdict, f"swap {role_id}")
        me = person.staff_number
        now = self.clock.now()
        shifts = [s for s in await self.store.shifts() if s.role == role_id and s.end > now]

        def next_of(staff: str) -> Any:
            mine = sorted((s for s in shifts if s.staff_number == staff), key=lambda s: s.start)
            return mine[0] if mine else None

        a, b = next_of(me), next_of(other)
        if a is None or b is None:
            who = self.name(me if a is None else other)
            return f"{who} has no coming shift of {oncall.roles[role_id].name} to swap."
        try:
            first, second = swap(a, b, me)
        except ValueError as exc:
            return str(exc)
        for override in (first, second):
            await self.store.add_override(uuid.uuid4().hex, override)
        await self.reload_roster()
        await self.audit.record(
            actor=requester, action="appservice.roster.swap", object=role_id, outcome="success",
            process="appservice", details={"with": other, "mine": a.start.isoformat(), "theirs": b.start.isoformat()},
        )
        zone = _zone(oncall.timezone)
        return (
            f"Swapped: {self.name(me)} takes {b.start.astimezone(zone):%a %H:%M}–{b.end.astimezone(zone):%H:%M}, "
            f"{self.name(other)} takes {a.start.astimezone(zone):%a %H:%M}–{a.end.astimezone(zone):%H:%M}."
        )

    async def hand_over(self) -> None:
        """At a shift change, conversations a role had in the last day get the incoming
        holder (who sees the history) and a notice; ``handover: release`` tells the outgoing
        holder they are no longer paged there."""
        oncall = self.oncall
        if oncall is None:
            return
        now = self.clock.now()
        for role in oncall.roles.values():
            holders = self._roster.on_duty(role.id, now)
            last = await self.store.last_holders(role.id)
            if last is None or tuple(last) == holders:
                if last is None:
                    await self.store.set_last_holders(role.id, holders)
                continue
            incoming = [s for s in holders if s not in last]
            outgoing = [s for s in last if s not in holders]
            role_user = self.matrix.uid(role.localpart)
            for room_id in await self.store.recent_rooms(role.id, now - timedelta(days=1)):
                for staff in incoming:
                    try:
                        await self.matrix.call(
                            "POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/invite",
                            {"user_id": self.user_id(staff), "reason": "Shift change"}, as_user=role_user,
                        )
                    except MatrixCallFailed as exc:
                        log.info("hand-over invite of %s to %s: %s", staff, room_id, exc)
                text = (
                    f"Shift change: {', '.join(self.name(s) for s in incoming) or 'nobody'} now holds {role.name}"
                    + (f", taking over from {', '.join(self.name(s) for s in outgoing)}" if outgoing else "")
                    + ("; they are released from this conversation." if outgoing and role.handover == "release" else ".")
                )
                try:
                    await self._notice(room_id, role_user, text, None, mentions=[self.user_id(s) for s in incoming + outgoing])
                except MatrixCallFailed as exc:
                    # A room the role can no longer post in (a closed, read-only case room;
                    # one it was removed from) must not hold up the hand-over everywhere else.
                    log.info("hand-over notice in %s not sent: %s", room_id, exc)
            await self.store.set_last_holders(role.id, holders)
            await self.audit.record(
                actor=self.bot, action="appservice.roster.handover", object=role.id, outcome="success",
                process="appservice", details={"incoming": incoming, "outgoing": outgoing},
            )

    # -- server admin -------------------------------------------------------------------

    async def server_admin(self) -> bool:
        """Whether the service may use Synapse's admin API yet (role names, quiet hours).
        On a fresh deployment ``carematrix up`` makes the bot server admin only after the
        appservice is up, so until then that upkeep waits instead of failing. Waiting long
        is a deployment problem and is said once at WARNING."""
        if self._is_admin:
            return True
        try:
            await self.matrix.call("GET", f"/_synapse/admin/v2/users/{quote(self.bot)}")
        except MatrixCallFailed as exc:
            if exc.status != 403:
                raise
            now = time.monotonic()
            if self._admin_waiting_since is None:
                self._admin_waiting_since = now
                log.info("role names and quiet hours wait until %s is server admin", self.bot)
            elif not self._admin_warned and now - self._admin_waiting_since > ADMIN_WAIT_WARN_SECONDS:
                self._admin_warned = True
                log.warning(
                    "%s is still not server admin after %.0f s: role names and quiet hours are not applied "
                    "(carematrix up makes it one; or set admin in Synapse's admin API)",
                    self.bot, now - self._admin_waiting_since,
                )
            return False
        self._is_admin = True
        if self._admin_waiting_since is not None:
            log.info("%s is server admin: applying role names and quiet hours", self.bot)
        return True

    # -- quiet hours --------------------------------------------------------------------

    async def set_quiet(self, requester: str, on: bool) -> str:
        staff = self.staff_of(requester)
        if staff is None:
            return "Quiet hours are for staff on the roster."
        await self.store.set_quiet_pref(staff, on)
        await self.apply_quiet_hours()
        return (
            "Quiet hours on: off duty, only critical alerts and pages addressed to you will ring."
            if on else "Quiet hours off: your notifications follow your own settings at all times."
        )

    async def apply_quiet_hours(self) -> None:
        """Staff who work shifts get their notifications silenced while off duty; critical
        messages and pages addressed to them still ring (appservice.oncall.quiet_hours)."""
        oncall = self.oncall
        if oncall is None or oncall.quiet_hours == "off":
            return
        now = self.clock.now()
        shift_workers = {s for role in oncall.roles for _, _, holders in self._roster.holders_between(role, now - ROSTER_PAST, now + ROSTER_AHEAD) for s in holders}
        prefs = await self.store.quiet_prefs()
        default = oncall.quiet_hours == "everyone"
        for staff in sorted(shift_workers):
            # Someone who has not chosen follows the hospital default; choosing "off" keeps
            # every notification as the client's own settings say.
            off = prefs.get(staff, default) and not self._roster.is_on_duty(staff, now)
            # Checked every pass, not only when the shift changes: a room the user mutes
            # afterwards lands above our rules, and the critical rule must go back on top.
            try:
                await self._set_quiet(self.user_id(staff), off)
                self._quiet_applied[staff] = off
            except NoAccountYet:
                # Org sync creates staff accounts (and reports any it cannot); the next pass
                # applies this person's quiet hours once the account exists.
                log.debug("quiet hours for %s: no account yet", staff)
            except MatrixCallFailed as exc:
                log.error("quiet hours for %s: %s", staff, exc)

    async def _set_quiet(self, user_id: str, off_duty: bool) -> None:
        user = self.matrix.with_token(await self._token_for(user_id))
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

    async def _token_for(self, user_id: str) -> str:
        token = self._user_tokens.get(user_id)
        if token is None:
            try:
                data = await self.matrix.call("POST", f"/_synapse/admin/v1/users/{quote(user_id)}/login", {})
            except MatrixCallFailed as exc:
                if exc.status == 404:
                    raise NoAccountYet(user_id) from exc
                raise
            token = data["access_token"]
            self._user_tokens[user_id] = token
        return token


ALERT_FIELD = "org.carematrix.alert_id"  # the short ID a page notice carries (for !ack)


def _already_there(exc: MatrixCallFailed) -> bool:
    text = str(exc.body)
    return exc.errcode == "M_FORBIDDEN" and ("already in the room" in text or "is already joined" in text)


def _reply_target(content: dict) -> str | None:
    relates = content.get("m.relates_to")
    if not isinstance(relates, dict):
        return None
    reply = relates.get("m.in_reply_to")
    return str(reply["event_id"]) if isinstance(reply, dict) and reply.get("event_id") else None


def _first_line(text: str) -> str:
    """A quoted reply's fallback ("> <@a:b> …") is not what the sender wrote."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(">")]
    return (lines[0] if lines else "").strip()[:200]


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)
