"""Run the CareMatrix appservice: bot account, commands, health endpoint, policy reload."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from mautrix.appservice import AppService
from mautrix.appservice.state_store.asyncpg import PgASStateStore
from mautrix.errors import MForbidden
from mautrix.types import (
    Event,
    EventType,
    Membership,
    MemberStateEventContent,
    MessageEvent,
    MessageType,
    StateEvent,
    TextMessageEventContent,
)
from mautrix.util.async_db import Database

from appservice import migrations
from appservice.audit_client import AuditClient
from appservice.calls import CallService, CallStore
from appservice.clinical.cases import CaseService
from appservice.clinical.fhir_intake import BASE as FHIR_BASE
from appservice.clinical.fhir_intake import FHIR_JSON, FhirIntake
from appservice.clinical.locate import PatientLocator
from appservice.clinical.service import ClinicalService
from appservice.clinical.store import ClinicalStore
from appservice.commands import (
    HELP,
    USAGE_ACK,
    USAGE_COVER,
    USAGE_QUIET,
    USAGE_SWAP,
    reply_ping,
    reply_unknown,
)
from appservice.config import AppserviceConfig, AppserviceConfigError
from appservice.console_api import ConsoleApi
from appservice.dedupe import NoTransactionIds, RecentEvents
from appservice.devices import DeviceService, DeviceStore
from appservice.holds import Holds
from appservice.homeserver import Homeserver, HomeserverUnreachable, MatrixCallFailed
from appservice.inbox import DONE, PENDING, EventInbox, InboxRow, InboxStore
from appservice.intake import TRANSACTIONS_PREFIX, Intake
from appservice.oncall.clock import Clock
from appservice.oncall.service import OncallService
from appservice.oncall.store import OncallStore
from appservice.org_sync import OrgSyncService
from appservice.systems_health import systems
from appservice.timing import http_trace
from appservice.voice.service import VoiceService
from appservice.voice.store import VoiceStore
from bridges.fhir.outcome import Issue, operation_outcome
from carematrix import identity
from carematrix.commands import parse_command
from carematrix.hsdb.migrations import SchemaVersionError
from carematrix.intake import Interest
from carematrix.loop_lag import probe_asyncio_loop, recorder_from_env
from carematrix.policy import PolicyInvalid
from carematrix.policy.holder import PolicyHolder, ReloadOutcome
from carematrix.policy.oncall import role_localpart
from carematrix.rules.protection import PRIORITY_FIELD

log = logging.getLogger("carematrix.appservice")

HEALTH_PATH = "/_carematrix/health"
BOT_DISPLAY_NAME = "CareMatrix"
ORG_SYNC_PATH = "/_carematrix/org/sync"
TEST_CLOCK_PATH = "/_carematrix/test/clock"
ALERTS_PATH = "/_carematrix/alerts/{facility}/{control_id}"
POLICY_POLL_SECONDS = 2.0
ONCALL_TICK_SECONDS = 0.5
QUIET_HOURS_SECONDS = 10.0
# Within the supervisor's 20 s before it kills a process that does not stop.
DRAIN_SECONDS = 10.0


class Bot:
    def __init__(
        self, config: AppserviceConfig, appserv: AppService, policy: PolicyHolder, org: OrgSyncService,
        oncall: OncallService,
    ) -> None:
        self.config = config
        self.appserv = appserv
        self.policy = policy
        self.org = org
        self.oncall = oncall
        self.started_at = time.time()
        self.last_rejected: ReloadOutcome | None = None
        self._applied_digest = policy.current.digest
        self.clinical: ClinicalService | None = None
        self.cases: CaseService | None = None
        self.calls: CallService | None = None
        # Set once the tables exist and the loops run: until then the health endpoint says
        # "starting" and nothing reads a table that may not exist yet.
        self.ready = asyncio.Event()
        self.recent = RecentEvents()
        # Handlers mautrix started for delivered events; a stop waits for them (see drain).
        self.in_flight: set[asyncio.Task] = set()
        self.stopping = False
        self.voice: VoiceService | None = None
        # Events the service acts on, written down before the homeserver was answered.
        self.inbox: EventInbox | None = None
        # The MLLP listener once it runs, and the HTTP session for the hospital's systems:
        # what ``/_carematrix/health?systems=1`` checks (appservice.systems_health).
        self.hl7_server: asyncio.AbstractServer | None = None
        self.session: aiohttp.ClientSession | None = None
        self.holds: Holds | None = None  # drills and tests only (appservice.holds)

    def on_policy_outcome(self, outcome: ReloadOutcome) -> None:
        self.last_rejected = None if outcome.accepted else outcome
        if outcome.accepted and outcome.digest != self._applied_digest and self.appserv.ready:
            # The org tree or the standard rooms may have changed: bring Matrix in line.
            self._applied_digest = outcome.digest
            # A stop waits for it like for an event handler (see drain).
            self._track(asyncio.get_running_loop().create_task(self._auto_sync()))

    async def _auto_sync(self) -> None:
        try:
            await self.org.run()
        except Exception:
            log.exception("automatic org sync failed")
        try:
            await self.oncall.ensure_role_accounts()
            await self.oncall.refresh_feeds(self.config.policy_dir, force=True)
        except Exception:
            log.exception("on-call refresh after a policy change failed")

    async def org_sync(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.config.as_token}":
            return web.json_response({"errcode": "M_FORBIDDEN", "error": "bad token"}, status=403)
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return web.json_response({"errcode": "M_BAD_JSON", "error": "body must be JSON"}, status=400)
        dry_run = bool(body.get("dry_run"))
        report = await self.org.run(dry_run=dry_run)
        if not dry_run:  # a dry run (the console's system page) applies nothing
            self._applied_digest = report.policy_digest
        return web.json_response(report.as_json())

    async def on_event(self, evt: Event) -> None:
        log.debug("event %s in %s", evt.type, getattr(evt, "room_id", "?"))
        if (task := asyncio.current_task()) is not None:
            self._track(task)
        event_id = getattr(evt, "event_id", None)
        written = self.inbox.take(event_id) if self.inbox is not None else None
        if not self.recent.first_time(event_id):
            return
        # Synapse may deliver events queued while we were down before our tables exist;
        # holding the transaction makes it wait (and retry) rather than lose them. Events
        # written down before a restart are handled before ``ready`` (see run).
        await self.ready.wait()
        if self.holds is not None:
            await self.holds.events.wait(str(event_id or evt.type))
        if written == DONE:
            log.info("%s in %s was handled before the restart; delivered again, not handled again",
                     event_id, getattr(evt, "room_id", "?"))
            return
        await self.handle(evt)
        if written == PENDING and self.inbox is not None and event_id:
            await self.inbox.done(event_id)

    async def handle(self, evt: Event) -> None:
        """What each kind of event does: from its delivery (on_event), or from the event
        inbox at start for one accepted before a crash or stop (appservice.inbox)."""
        try:
            if evt.type == EventType.ROOM_MEMBER:
                await self._on_member(evt)  # type: ignore[arg-type]
            elif evt.type == EventType.ROOM_MESSAGE:
                await self._on_message(evt)  # type: ignore[arg-type]
                content = evt.content.serialize()
                await self.oncall.on_message(str(evt.room_id), str(evt.sender), str(evt.event_id), content)
                if self.voice is not None:
                    # Queues a voice message for its transcript and returns at once.
                    await self.voice.on_message(str(evt.room_id), str(evt.sender), str(evt.event_id), content)
            elif evt.type == EventType.REACTION:
                relates = evt.content.serialize().get("m.relates_to") or {}
                await self.oncall.on_reaction(str(evt.room_id), str(evt.sender), relates.get("event_id"))
            elif evt.type == EventType.RECEIPT:
                await self._on_receipt(evt)
        except Exception:
            log.exception("failed to handle %s in %s", evt.type, getattr(evt, "room_id", "?"))

    async def acts_on(self, event: Interest) -> bool:
        """The event inbox's question: does a handler act on this delivered event?"""
        return event.certain or await self.oncall.acts_on(event)

    async def not_handled(self, row: InboxRow) -> None:
        """An event the inbox gave up on (its handling took the appservice down at every
        start): its sender is told in its room, by the role account there or else the bot,
        so a page nobody received is never silent."""
        roles = await self.oncall.store.role_rooms(row.room_id)
        speaker = self.oncall.ctx.matrix.uid(role_localpart(roles[0][0])) if roles else self.appserv.bot_mxid
        text = (
            "您的消息在服务重启后未能处理，未送达任何人。如为呼叫或紧急情况，请直接打电话。"
            " Your message could not be handled after the service restarted and reached nobody."
            " If it was a page or is urgent, phone instead."
        )
        txn_id = f"not-handled-{uuid.uuid5(uuid.NAMESPACE_URL, row.event_id).hex}"
        try:
            await self.oncall.ctx.notice(row.room_id, speaker, text, txn_id, mentions=[row.sender], priority="urgent")
        except (MatrixCallFailed, HomeserverUnreachable) as exc:
            log.warning("could not tell %s in %s that their message %s was not handled: %s",
                        row.sender, row.room_id, row.event_id, exc)

    async def _on_receipt(self, evt: Any) -> None:
        content = evt.content.serialize() if hasattr(evt.content, "serialize") else dict(evt.content)
        # {event_id: {"m.read": {user: {...}}}}: each reader read up to that event. mautrix
        # gives the receipt types as enum members, not strings.
        readers = {
            (user, event_id)
            for event_id, by_type in content.items()
            if isinstance(by_type, dict)
            for kind, users in by_type.items()
            if str(getattr(kind, "value", kind)) in ("m.read", "m.read.private") and isinstance(users, dict)
            for user in users
        }
        for user, event_id in sorted(readers):
            await self.oncall.on_read(str(evt.room_id), user, str(event_id))

    async def _on_member(self, evt: StateEvent) -> None:
        member = evt.content
        if not isinstance(member, MemberStateEventContent):
            return
        if await self.oncall.on_member(
            str(evt.room_id), str(evt.sender), str(evt.state_key), str(member.membership.value),
            bool(member.serialize().get("is_direct")), str(evt.event_id),
        ):
            return
        if evt.state_key != self.appserv.bot_mxid or member.membership != Membership.INVITE:
            return
        # Only hospital accounts may pull the bot into rooms.
        if identity.server_name(evt.sender) != self.config.domain:
            log.warning("ignoring invite from non-local %s to %s", evt.sender, evt.room_id)
            return
        await self.appserv.intent.join_room(evt.room_id)
        log.info("joined %s on invite from %s", evt.room_id, evt.sender)

    async def _on_message(self, evt: MessageEvent) -> None:
        if identity.is_system_account(evt.sender, self.appserv.bot_mxid, self.config.domain):
            return
        body = getattr(evt.content, "body", None)
        if not isinstance(body, str):
            return
        command = parse_command(body)
        if command is None:
            return
        if command.name == "ping":
            latency = max(0.0, time.time() * 1000 - evt.timestamp) if evt.timestamp else None
            reply = reply_ping(latency, self.policy.current.digest)
        elif command.name == "help":
            reply = HELP
        elif command.name == "quiet":
            reply = (
                await self.oncall.set_quiet(str(evt.sender), command.args[0].lower() == "on")
                if len(command.args) == 1 and command.args[0].lower() in ("on", "off") else USAGE_QUIET
            )
        elif command.name == "ack":
            reply = (
                await self.oncall.ack_command(str(evt.sender), command.args[0])
                if len(command.args) == 1 else USAGE_ACK
            )
        elif command.name == "oncall":
            reply = await self._oncall_command(str(evt.sender), command.args)
        elif command.name == "call" and self.calls is not None:
            reply = await self.calls.command(str(evt.sender), command.args)
        elif command.name in ("case", "decision", "images") and self.cases is not None:
            answer = await self.cases.command(str(evt.room_id), str(evt.sender), command.name, command.args)
            if answer is None:
                return
            reply = answer
        else:
            reply = reply_unknown(command.name)
        # Every message from the service carries its priority (docs/clinical.md); replies
        # to commands are routine. The transaction ID is made from the command: a command
        # handled again after a crash (appservice.inbox) is answered once.
        content = TextMessageEventContent(msgtype=MessageType.NOTICE, body=reply)
        content[PRIORITY_FIELD] = "routine"
        txn_id = f"reply-{uuid.uuid5(uuid.NAMESPACE_URL, str(evt.event_id)).hex}"
        roles = await self.oncall.store.role_rooms(str(evt.room_id))
        if roles:
            # A role's room (its direct chat, where its pages are: "or send !ack <id>" is
            # typed there): the bot is not in it, the role account answers.
            speaker = self.oncall.ctx.matrix.uid(role_localpart(roles[0][0]))
            try:
                await self.oncall.ctx.notice(str(evt.room_id), speaker, reply, txn_id)
            except (MatrixCallFailed, HomeserverUnreachable) as exc:
                log.warning("could not answer !%s from %s in %s: %s", command.name, evt.sender, evt.room_id, exc)
            return
        await self.appserv.intent.send_message_event(evt.room_id, EventType.ROOM_MESSAGE, content, txn_id=txn_id)

    async def _oncall_command(self, sender: str, args: tuple[str, ...]) -> str:
        """``!oncall [unit]`` lists who holds each role now and next; ``!oncall cover <role>
        until HH:MM [staff number]`` hands a role over until then."""
        if args and args[0] == "swap":
            if len(args) != 3:
                return USAGE_SWAP
            return await self.oncall.swap_shifts(sender, args[1], args[2].upper())
        if args and args[0] == "cover":
            if len(args) < 4 or args[2] != "until":
                return USAGE_COVER
            try:
                hour, minute = (int(x) for x in args[3].split(":"))
                until = self.oncall.local_today(hour, minute)
            except ValueError:
                return f"时间 '{args[3]}' 无效，请写成 14:00 这样的格式。 '{args[3]}' is not a time like 14:00."
            staff = args[4] if len(args) > 4 else self.oncall.staff_of(sender)
            if staff is None:
                return "请写明顶班人员的工号。 Name the staff number who covers."
            return await self.oncall.cover(sender, args[1], until, staff)
        return self.oncall.listing(args[0] if args else None)

    async def test_clock(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.config.as_token}":
            return web.json_response({"errcode": "M_FORBIDDEN", "error": "bad token"}, status=403)
        body = await request.json()
        self.oncall.clock.set(datetime.fromisoformat(body["now"]))
        # A jump beyond the roster window in force is caught up before the answer, as the
        # upkeep loop would within a tick, so the caller's next page finds the shifts.
        await self.oncall.refresh_feeds(self.config.policy_dir)
        await self.oncall.tick()
        return web.json_response({"now": self.oncall.clock.now().isoformat()})

    async def oncall_loop(self) -> None:
        """Escalation deadlines are checked every half second; nothing slow runs here."""
        while True:
            await asyncio.sleep(ONCALL_TICK_SECONDS)
            try:
                await self.oncall.tick()
            except Exception:
                log.exception("on-call escalation tick failed; retrying")

    async def oncall_upkeep_loop(self) -> None:
        """Role accounts, roster feeds and shift hand-overs: slower work in its own task, so
        it never delays an escalation."""
        while True:
            await asyncio.sleep(ONCALL_TICK_SECONDS)
            try:
                if not self.oncall.roles_named and await self.oncall.server_admin():
                    await self.oncall.ensure_role_accounts()
                await self.oncall.refresh_feeds(self.config.policy_dir)
                await self.oncall.hand_over()
            except HomeserverUnreachable as exc:
                # A homeserver restart: expected and passing, so one line without a traceback.
                log.warning("on-call upkeep waits for the homeserver: %s; retrying", exc)
            except Exception:
                log.exception("on-call upkeep failed; retrying")

    async def quiet_hours_loop(self) -> None:
        """Push rules of every shift worker: the slowest upkeep (a request or two per person),
        in its own task so a large staff never holds up a shift hand-over. Setting another
        user's push rules needs the admin API, so it waits until the service is server admin
        (on a fresh deployment `carematrix up` makes it one after the appservice started)."""
        while True:
            await asyncio.sleep(ONCALL_TICK_SECONDS)
            try:
                if not await self.oncall.server_admin():
                    continue
                await self.oncall.apply_quiet_hours()
            except HomeserverUnreachable as exc:
                # A homeserver restart: expected and passing, so one line without a traceback.
                log.warning("quiet hours upkeep waits for the homeserver: %s; retrying", exc)
            except Exception:
                log.exception("quiet hours upkeep failed; retrying")
            await asyncio.sleep(QUIET_HOURS_SECONDS)

    async def health(self, request: web.Request) -> web.Response:
        ready = self.ready.is_set()
        body: dict[str, Any] = {
            "status": "ok" if ready else "starting",
            "bot": self.appserv.bot_mxid,
            "homeserver": self.config.homeserver_url,
            "policy_digest": self.policy.current.digest,
            "uptime_seconds": round(time.time() - self.started_at),
        }
        if self.last_rejected is not None:
            body["policy_rejected_edit"] = [str(e) for e in self.last_rejected.errors]
        clinical = self.clinical
        if clinical is not None and ready:
            body["hl7"] = await clinical.store.counts()
            undelivered = await clinical.store.undelivered()
            if undelivered:
                # Accepted hospital messages nobody could be told about: someone must act.
                body["undelivered"] = [
                    {"source": u["facility"], "control_id": u["control_id"], "type": u["message_type"],
                     "received_at": u["received_at"], "why": u["result"]}
                    for u in undelivered
                ]
        if self.voice is not None:
            body["voice"] = self.voice.health()
        if self.oncall.feed_errors:
            body["roster_feed_errors"] = self.oncall.feed_errors
        if self.org.last_report is not None:
            body["org_sync"] = {
                "policy_digest": self.org.last_report.policy_digest,
                "errors": len(self.org.last_report.errors),
            }
        if request.query.get("systems") and ready and clinical is not None and self.session is not None:
            body["systems"] = await systems(self.config, self.policy.current, clinical.store, self.hl7_server,
                                            self.session)
        return web.json_response(body, status=200 if ready else 503)

    def _track(self, task: asyncio.Task) -> None:
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def drain(self, timeout: float) -> None:
        """Let the handlers of events already delivered, and an org sync a policy change
        started, finish before the session closes.

        mautrix acknowledges a transaction before its handlers run, so a handler cut off by
        the stop (a `!case close` half-way through its archive) would be lost, and its
        requests would fail on the closed session with an ERROR. New transactions are
        refused meanwhile (see readiness_gate): the homeserver delivers them after the restart.
        """
        pending = {t for t in self.in_flight if t is not asyncio.current_task() and not t.done()}
        if not pending:
            return
        log.info("stopping: waiting up to %.0f s for %d task(s) to finish", timeout, len(pending))
        _, unfinished = await asyncio.wait(pending, timeout=timeout)
        if unfinished:
            log.warning("stopping: %d task(s) did not finish within %.0f s and were cancelled (event handlers: "
                        "pages, acknowledgements and commands are taken up again at the next start; org sync "
                        "after a policy change: run `carematrix org sync`)", len(unfinished), timeout)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)

    @web.middleware
    async def readiness_gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Our HTTP endpoints (FHIR intake, alert state) read tables that exist only once
        start-up is done: a caller that comes early is told to come back, not served a 500.
        While stopping, the homeserver's transactions are refused so it keeps them for later."""
        if self.stopping and request.path.startswith(TRANSACTIONS_PREFIX):
            return web.json_response({"errcode": "M_NOT_READY", "error": "CareMatrix is stopping"}, status=503)
        if self.ready.is_set() or not request.path.startswith("/_carematrix/") or request.path == HEALTH_PATH:
            return await handler(request)
        text = "CareMatrix is starting; try again shortly"
        headers = {"Retry-After": "2"}
        if request.path.startswith(FHIR_BASE):
            # A FHIR sender's engine shows OperationOutcomes; "transient" tells it to retry.
            outcome = operation_outcome([Issue("error", "transient", text)])
            return web.json_response(outcome, status=503, headers=headers, content_type=FHIR_JSON)
        return web.json_response({"errcode": "M_NOT_READY", "error": text}, status=503, headers=headers)

    async def poll_policy(self) -> None:
        """Edits are parsed by a child process and taken in by a thread (the holder says
        why): MLLP ACKs and the escalation tick keep running meanwhile."""
        while True:
            await asyncio.sleep(POLICY_POLL_SECONDS)
            try:
                await self.policy.refresh(asyncio.to_thread)
            except Exception:
                log.exception("policy refresh failed; keeping the policy in force")


async def run(config: AppserviceConfig) -> None:
    lag = recorder_from_env("appservice")
    lag_probe = asyncio.create_task(probe_asyncio_loop(lag)) if lag is not None else None
    holder = PolicyHolder(config.policy_dir)
    # The modules and the policy just loaded live as long as the process: left out of the
    # collector's scans from here on (as Synapse does at start, and as each reload does for
    # the policy it brings: carematrix.policy.holder.parse_elsewhere), so no collection walks
    # a 5,000-staff policy while MLLP ACKs wait.
    gc.freeze()
    db = Database.create(config.database, upgrade_table=PgASStateStore.upgrade_table, owner_name="carematrix")
    await db.start()  # mautrix's state cache tables
    await migrations.upgrade(db)  # ours
    # Events accepted before the last stop or crash and not handled yet: read before the
    # homeserver can deliver anything, handled before the service says it is ready.
    inbox_store = InboxStore(db)
    backlog = await inbox_store.pending()
    appserv = AppService(
        server=config.homeserver_url,
        domain=config.domain,
        as_token=config.as_token,
        hs_token=config.hs_token,
        bot_localpart=config.bot_localpart,
        id=config.id,
        log="carematrix.appservice.mau",
        state_store=PgASStateStore(db),
        ephemeral_events=True,
    )
    # Every call to the homeserver goes through mautrix's client as the bot.
    homeserver = Homeserver(lambda: appserv.intent.api, config.domain)
    audit = AuditClient(homeserver)
    org = OrgSyncService(
        db,
        holder,
        homeserver,
        appserv.bot_mxid,
        config.initial_password,
        audit,
    )
    # For the hospital's other systems (FHIR, DICOMweb, EMR); EMR lookups of a critical result
    # are timed as its steps (appservice.timing).
    session = aiohttp.ClientSession(trace_configs=[http_trace()])
    oncall = OncallService(
        OncallStore(db), holder, homeserver,
        appserv.bot_mxid, audit, Clock(),
    )
    clinical = ClinicalService(
        ClinicalStore(db), holder, homeserver, oncall, audit,
        appserv.bot_mxid, config.his_token,
    )
    cases = CaseService(
        db, clinical.store, holder, homeserver, oncall, audit,
        appserv.bot_mxid, fhir_server=config.fhir_server, dicomweb=config.dicomweb,
        emr_archive=config.emr_archive, archive_dir=config.case_archives, session=session,
        token=config.systems_token,
    )
    clinical.cases = cases
    clinical.source_tokens = config.fhir_tokens
    if config.fhir_server:
        clinical.fetch_resource = _fhir_reader(session, config.fhir_server, config.systems_token)
    # Where a patient lies: ADT, else the FHIR server's current Encounter; for case rooms and
    # for critical results whose message names no ward alike.
    locator = PatientLocator(clinical.store, holder, clinical.fetch_resource)
    cases.locator = locator

    async def locate_ward(patient_id: str) -> tuple[str, str] | None:
        located = await locator.ward_of(patient_id)
        return (located.ward, located.how.removeprefix("from ")) if located else None

    clinical.locate_ward = locate_ward
    fhir = FhirIntake(
        clinical.store, holder, config.fhir_tokens, audit,
        clinical.wake, can_fetch=bool(config.fhir_server),
    )
    fhir.routes(appserv.app)
    # Nurse-call buttons, badges and bedside terminals (appservice.devices).
    DeviceService(DeviceStore(db), holder, oncall, config.device_token_hashes).routes(appserv.app)
    bot = Bot(config, appserv, holder, org, oncall)
    bot.session = session
    default_cache = (config.log_file.parent if config.log_file else Path.cwd()) / "voice-models"
    holds = Holds(config.as_token) if config.test_clock else None
    voice = VoiceService(
        config.voice, holder, homeserver, appserv.bot_mxid, audit, oncall.store, default_cache, VoiceStore(db), holds,
    )
    bot.voice = voice
    bot.holds = holds
    oncall.outbox.holds = holds
    bot.inbox = EventInbox(inbox_store, appserv.bot_mxid, config.domain, bot.acts_on)
    intake = Intake(config.hs_token)
    intake.takers += [voice, bot.inbox]
    bot.clinical = clinical
    bot.cases = cases
    bot.calls = CallService(CallStore(db), oncall, clinical.direct_room)
    holder.on_outcome = bot.on_policy_outcome
    appserv.matrix_event_handler(bot.on_event)
    appserv.transactions = NoTransactionIds()  # duplicates are recognised per event (appservice.dedupe)
    # mautrix annotates the alias query as returning JSON, yet awaits it (and ours is async).
    appserv.query_alias = oncall.query_alias  # type: ignore[assignment]
    appserv.app.router.add_get(ALERTS_PATH, clinical.alert_state)
    appserv.app.router.add_get(HEALTH_PATH, bot.health)
    appserv.app.middlewares.append(bot.readiness_gate)
    appserv.app.middlewares.append(intake.middleware)
    appserv.app.router.add_post(ORG_SYNC_PATH, bot.org_sync)
    ConsoleApi(config.as_token, oncall, clinical).routes(appserv.app)
    if config.test_clock:
        appserv.app.router.add_post(TEST_CLOCK_PATH, bot.test_clock)
    if holds is not None:
        holds.routes(appserv.app)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    await appserv.start(config.listen_host, config.listen_port)
    try:
        await _wait_for_homeserver(appserv, stop)
        if stop.is_set():
            return
        await appserv.intent.ensure_registered()
        try:
            await appserv.intent.set_displayname(BOT_DISPLAY_NAME)
        except MForbidden:
            # Real-name servers lock display names; `carematrix up` sets the bot's through
            # the admin API instead.
            log.info("display names are locked on this server; bot name set by admin tooling")
        await oncall.setup()
        await oncall.refresh_feeds(config.policy_dir, force=True)
        await cases.setup()
        await voice.start()
        if backlog:
            log.warning("taking up %d page(s), acknowledgement(s) or command(s) accepted before the restart",
                        len(backlog))
            await bot.inbox.resume(backlog, bot.recent.first_time, bot.handle, bot.not_handled)
        hl7_server = await clinical.serve(config.hl7_host, config.hl7_port, config.mllp_limits) if config.hl7_port else None
        bot.hl7_server = hl7_server
        poller = asyncio.create_task(bot.poll_policy())
        oncall_tasks = [
            asyncio.create_task(bot.oncall_loop()),
            asyncio.create_task(bot.oncall_upkeep_loop()),
            asyncio.create_task(bot.quiet_hours_loop()),
            asyncio.create_task(clinical.deliver_loop()),
            asyncio.create_task(clinical.keep_spare_alert_room()),
        ]
        appserv.ready = True
        bot.ready.set()
        log.info("CareMatrix appservice ready as %s on %s:%d", appserv.bot_mxid, config.listen_host, config.listen_port)
        await stop.wait()
        bot.stopping = True
        await bot.drain(DRAIN_SECONDS)
        poller.cancel()
        for task in oncall_tasks:
            task.cancel()
        # They unwind before the HTTP session closes under them (a send cut off by the
        # closed session would be reported as a failure).
        await asyncio.gather(*oncall_tasks, return_exceptions=True)
        await voice.stop()
        if hl7_server is not None:
            hl7_server.close()
    finally:
        log.info("stopping")
        if lag_probe is not None:
            lag_probe.cancel()
        await session.close()
        await appserv.stop()
        await db.stop()


def _fhir_reader(session: aiohttp.ClientSession, base: str, token: str | None) -> Any:
    """Reads one resource ("Observation/123") from the hospital's FHIR server."""
    headers = {"Accept": "application/fhir+json"} | ({"Authorization": f"Bearer {token}"} if token else {})

    async def read(reference: str) -> dict:
        async with session.get(f"{base}/{reference}", headers=headers) as resp:
            if resp.status >= 400:
                raise RuntimeError(f"FHIR server answered HTTP {resp.status} for {reference}")
            return await resp.json(content_type=None)

    return read


async def _wait_for_homeserver(appserv: AppService, stop: asyncio.Event) -> None:
    """The homeserver may still be starting; keep trying rather than crash-loop."""
    delay = 0.2
    while not stop.is_set():
        try:
            await appserv.intent.whoami()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            log.info("homeserver not answering yet (%s); retrying", type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _setup_logging(config: AppserviceConfig) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers[0].setLevel(logging.WARNING)
    if config.log_file is not None:
        config.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(config.log_file, encoding="utf-8"))
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("CAREMATRIX_DEBUG") else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appservice", description=__doc__)
    parser.add_argument("-c", "--config", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        config = AppserviceConfig.load(args.config)
    except AppserviceConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config)
    try:
        asyncio.run(run(config))
    except PolicyInvalid as exc:
        print(f"error: the policy in {config.policy_dir} is invalid:\n{exc}", file=sys.stderr)
        return 2
    except SchemaVersionError as exc:
        log.critical("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
