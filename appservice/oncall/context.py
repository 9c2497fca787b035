"""What every part of the on-call service shares: the store, the policy, the homeserver, the
audit trail, the clock, the roster in force and the one lock over page state. People and times
are said the same way everywhere through it (names with staff numbers, the hospital's time
zone), and every notice the service posts goes out through ``notice``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

from appservice.audit_client import AuditClient
from appservice.homeserver import Homeserver, HomeserverUnreachable, MatrixCallFailed
from appservice.oncall.clock import Clock
from appservice.oncall.store import OncallStore
from carematrix import identity
from carematrix.oncall.roster import Roster
from carematrix.policy.holder import PolicyHolder
from carematrix.policy.model import Policy
from carematrix.policy.oncall import OncallPolicy, RoleAddress
from carematrix.policy.org import Staff, staff_localpart
from carematrix.rules.protection import PAGE_FLAG, PRIORITY_FIELD

log = logging.getLogger("carematrix.appservice.oncall")

ALERT_FIELD = "org.carematrix.alert_id"  # the short ID a page notice carries (for !ack)


class OncallContext:
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
        self.roster = Roster([])
        # Page state changes one at a time: opening, escalating and acknowledging all read a
        # page and write it back with its outbox.
        self.page_lock = asyncio.Lock()
        # Page notices being sent, per room. A doctor's client shows a notice (and the doctor
        # may react to it) before the send returns its event ID and the notice is recorded
        # as the page's; an acknowledgement of an unknown event waits for these to land.
        self._notices_in_flight: dict[str, int] = {}
        self._notice_landed = asyncio.Condition()

    # -- page notices in flight ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def sending_page_notice(self, room_id: str) -> AsyncIterator[None]:
        """Around sending a page notice and recording it as the page's."""
        self._notices_in_flight[room_id] = self._notices_in_flight.get(room_id, 0) + 1
        try:
            yield
        finally:
            left = self._notices_in_flight[room_id] - 1
            if left:
                self._notices_in_flight[room_id] = left
            else:
                del self._notices_in_flight[room_id]
            async with self._notice_landed:
                self._notice_landed.notify_all()

    def page_notice_in_flight(self, room_id: str) -> bool:
        return room_id in self._notices_in_flight

    async def page_notices_landed(self, room_id: str, timeout: float) -> bool:
        """Waits until no page notice is being sent in ``room_id``; False on timeout."""
        async with self._notice_landed:
            try:
                await asyncio.wait_for(
                    self._notice_landed.wait_for(lambda: room_id not in self._notices_in_flight), timeout)
            except TimeoutError:
                return False
        return True

    # -- policy and roster --------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        return self.holder.current

    @property
    def oncall(self) -> OncallPolicy | None:
        return self.policy.oncall

    async def reload_roster(self) -> None:
        self.roster = Roster(await self.store.shifts(), await self.store.overrides())

    # -- people -------------------------------------------------------------------------

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

    def words(self, text: str) -> str:
        """Staff numbers in the state machine's messages become names people recognise. One
        already written beside its name, ``刘洋 Liu Yang (N3001)`` as a page's subject names its
        sender, is left as it is (else the page read ``刘洋 Liu Yang (刘洋 Liu Yang (N3001))``)."""
        return re.sub(r"(?<!\()\b[A-Za-z0-9][A-Za-z0-9._-]*\b(?!\))", lambda m: self.name(m.group(0)), text)

    def display(self, user_id: str) -> str:
        person = self.person(user_id)
        return f"{person.name} ({person.staff_number})" if person else user_id

    # -- time ---------------------------------------------------------------------------

    def local_now(self) -> datetime:
        """Now in the hospital's time zone: every time a person reads is local."""
        return self.clock.now().astimezone(zone(self.oncall.timezone if self.oncall else "UTC"))

    # -- Matrix -------------------------------------------------------------------------

    async def membership(self, room_id: str, user_id: str, as_user: str | None = None) -> str | None:
        """``user_id``'s membership of the room as ``as_user`` (else the service) sees it; None
        if it cannot be read (not in the room, or the homeserver did not answer: the caller
        then acts)."""
        try:
            member = await self.matrix.call(
                "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.member/{quote(user_id)}",
                as_user=as_user,
            )
        except (MatrixCallFailed, HomeserverUnreachable):
            return None
        return str(member.get("membership") or "") or None

    async def notice(
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


def zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def first_line(text: str) -> str:
    """A quoted reply's fallback ("> <@a:b> …") is not what the sender wrote."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(">")]
    return (lines[0] if lines else "").strip()[:200]
