"""On-duty role addressing in the appservice: the ``OncallService`` the rest of the
appservice talks to. It wires the parts, each with one job, around one shared context
(store, policy, homeserver, audit trail, clock, roster in force; ``context.py``):

- ``accounts.py`` — role accounts, their desk rooms and joins;
- ``admin_gate.py`` — whether the bot is server admin yet;
- ``feeds.py`` — roster feeds read and put in force;
- ``paging.py`` — pages opened, escalated by the tick, ended;
- ``outbox.py`` — page state and its sends committed together, then sent with retries;
- ``acks.py`` — acknowledgements (reply, reaction, ``!ack``, read) and seen receipts;
- ``commands.py`` — ``!oncall`` listing, cover and swap;
- ``handover.py`` — conversations handed to the incoming holder at a shift change;
- ``quiet_hours_sync.py`` — quiet hours kept in each shift worker's push rules.

The decisions are the pure functions of carematrix.oncall; these modules do the Matrix and
database I/O around them. A restart resumes open pages at their deadlines and sends what was
not yet sent.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from appservice.audit_client import AuditClient
from appservice.homeserver import Homeserver
from appservice.oncall.accounts import RoleAccounts
from appservice.oncall.acks import Acknowledgements
from appservice.oncall.admin_gate import AdminGate
from appservice.oncall.clock import Clock
from appservice.oncall.commands import RosterCommands
from appservice.oncall.context import OncallContext
from appservice.oncall.feeds import RosterFeeds
from appservice.oncall.handover import ShiftHandover
from appservice.oncall.outbox import Outbox
from appservice.oncall.paging import Pager
from appservice.oncall.quiet_hours_sync import QuietHoursSync
from appservice.oncall.store import OncallStore
from carematrix import identity
from carematrix.intake import MESSAGE, Interest
from carematrix.oncall.escalation import Page
from carematrix.policy.holder import PolicyHolder
from carematrix.policy.model import Policy
from carematrix.policy.oncall import OncallPolicy
from carematrix.policy.org import Staff


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
        self.ctx = OncallContext(store, holder, matrix, bot_user_id, audit, clock)
        self.admin = AdminGate(matrix, bot_user_id)
        self.accounts = RoleAccounts(self.ctx)
        self.feeds = RosterFeeds(self.ctx)
        self.outbox = Outbox(self.ctx)
        self.pages = Pager(self.ctx, self.accounts, self.outbox)
        self.acks = Acknowledgements(self.ctx, self.outbox)
        self.commands = RosterCommands(self.ctx)
        self.handover = ShiftHandover(self.ctx)
        self.quiet = QuietHoursSync(self.ctx)

    # -- what the rest of the appservice reads ------------------------------------------

    @property
    def store(self) -> OncallStore:
        return self.ctx.store

    @property
    def clock(self) -> Clock:
        return self.ctx.clock

    @property
    def policy(self) -> Policy:
        return self.ctx.policy

    @property
    def oncall(self) -> OncallPolicy | None:
        return self.ctx.oncall

    @property
    def feed_errors(self) -> dict[str, str]:
        return self.feeds.errors

    @property
    def roles_named(self) -> bool:
        return self.accounts.roles_named

    def user_id(self, staff_number: str) -> str:
        return self.ctx.user_id(staff_number)

    def person(self, user_id: str) -> Staff | None:
        return self.ctx.person(user_id)

    def staff_of(self, user_id: str) -> str | None:
        return self.ctx.staff_of(user_id)

    def name(self, staff_number: str) -> str:
        return self.ctx.name(staff_number)

    def local_now(self) -> datetime:
        return self.ctx.local_now()

    def local_today(self, hour: int, minute: int) -> datetime:
        return self.commands.local_today(hour, minute)

    # -- start-up and upkeep ------------------------------------------------------------

    async def setup(self) -> None:
        await self.ctx.reload_roster()
        await self.ensure_role_accounts()

    async def ensure_role_accounts(self) -> None:
        await self.accounts.ensure_role_accounts()

    async def server_admin(self) -> bool:
        return await self.admin.server_admin()

    async def refresh_feeds(self, policy_dir: Path, force: bool = False) -> None:
        await self.feeds.refresh(policy_dir, force)

    async def hand_over(self) -> None:
        await self.handover.hand_over()

    async def apply_quiet_hours(self) -> None:
        await self.quiet.apply()

    async def tick(self) -> None:
        await self.pages.tick()

    async def flush(self) -> None:
        await self.outbox.flush()

    # -- Matrix events ------------------------------------------------------------------

    async def query_alias(self, alias: str) -> dict | None:
        return await self.accounts.query_alias(alias)

    async def on_member(
        self, room_id: str, sender: str, state_key: str, membership: str, direct: bool = False,
        event_id: str | None = None,
    ) -> bool:
        return await self.accounts.on_member(room_id, sender, state_key, membership, direct, event_id)

    async def on_message(self, room_id: str, sender: str, event_id: str, content: dict | None = None) -> None:
        """A reply to a page acknowledges that page; then, in a room with a role account, the
        message may page the role. The service's own accounts page nobody."""
        if identity.is_system_account(sender, self.ctx.bot, self.ctx.matrix.server):
            return
        await self.acks.on_reply(room_id, sender, content or {})
        await self.pages.on_message(room_id, sender, event_id, content or {})

    async def acts_on(self, event: Interest) -> bool:
        """Whether a member's message or reaction, delivered and not yet answered, is one the
        service acts on: it pages a role of its room, or replies or reacts to a page."""
        if event.target and await self.acks.may_acknowledge(event.room_id, event.target):
            return True
        return event.kind == MESSAGE and await self.pages.addressed(event.room_id, dict(event.content))

    async def on_reaction(self, room_id: str, sender: str, target_event: str | None) -> None:
        await self.acks.on_reaction(room_id, sender, target_event)

    async def on_read(self, room_id: str, sender: str, event_id: str | None = None) -> None:
        await self.acks.on_read(room_id, sender, event_id)

    # -- pages for the clinical side ----------------------------------------------------

    async def page_for_system(
        self, page_id: str, role_id: str, room_id: str, event_id: str, sender: str, *,
        priority: str = "critical", subject: str = "", lead: str | None = None,
        unreached: list[str] | None = None,
    ) -> Page | None:
        return await self.pages.page_for_system(
            page_id, role_id, room_id, event_id, sender, priority=priority, subject=subject, lead=lead,
            unreached=unreached,
        )

    def first_paged(self, role_id: str, lead: str | None = None) -> tuple[str, ...]:
        return self.pages.first_paged(role_id, lead)

    async def page_ahead(
        self, page_id: str, role_id: str, rooms: dict[str, str], *, priority: str, subject: str,
        lead: str | None = None, note: str = "",
    ) -> list[str]:
        return await self.pages.page_ahead(
            page_id, role_id, rooms, priority=priority, subject=subject, lead=lead, note=note
        )

    async def end_pages_in(self, room_id: str, reason: str) -> int:
        return await self.pages.end_pages_in(room_id, reason)

    # -- commands -----------------------------------------------------------------------

    async def ack_command(self, sender: str, given: str) -> str:
        return await self.acks.ack_command(sender, given)

    def listing(self, unit: str | None) -> str:
        return self.commands.listing(unit)

    async def cover(self, requester: str, role_id: str, until: datetime, staff_number: str) -> str:
        return await self.commands.cover(requester, role_id, until, staff_number)

    async def swap_shifts(self, requester: str, role_id: str, other: str) -> str:
        return await self.commands.swap_shifts(requester, role_id, other)

    async def as_user(self, user_id: str) -> Homeserver:
        """The homeserver as a member of staff (an admin-API login, kept): for what only they
        can do — their push rules, a direct chat of theirs."""
        return self.ctx.matrix.with_token(await self.quiet.token_for(user_id))

    async def set_quiet(self, requester: str, on: bool) -> str:
        return await self.quiet.set_quiet(requester, on)
