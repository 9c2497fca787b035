"""Run the CareMatrix appservice: bot account, commands, health endpoint, policy reload."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
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
from appservice.clinical.cases import CaseService
from appservice.clinical.fhir_intake import BASE as FHIR_BASE
from appservice.clinical.fhir_intake import FHIR_JSON, FhirIntake
from appservice.clinical.locate import PatientLocator
from appservice.clinical.service import ClinicalService
from appservice.clinical.store import ClinicalStore
from appservice.commands import HELP, reply_ping, reply_unknown
from appservice.config import AppserviceConfig, AppserviceConfigError
from appservice.dedupe import NoTransactionIds, RecentEvents
from appservice.homeserver import Homeserver, HomeserverUnreachable
from appservice.oncall.clock import Clock
from appservice.oncall.service import OncallService
from appservice.oncall.store import OncallStore
from appservice.org_sync import OrgSyncService
from appservice.timing import http_trace
from bridges.fhir.outcome import Issue, operation_outcome
from carematrix import identity
from carematrix.commands import parse_command
from carematrix.hsdb.migrations import SchemaVersionError
from carematrix.loop_lag import probe_asyncio_loop, recorder_from_env
from carematrix.policy import PolicyInvalid
from carematrix.policy.holder import PolicyHolder, ReloadOutcome
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
        # Set once the tables exist and the loops run: until then the health endpoint says
        # "starting" and nothing reads a table that may not exist yet.
        self.ready = asyncio.Event()
        self.recent = RecentEvents()

    def on_policy_outcome(self, outcome: ReloadOutcome) -> None:
        self.last_rejected = None if outcome.accepted else outcome
        if outcome.accepted and outcome.digest != self._applied_digest and self.appserv.ready:
            # The org tree or the standard rooms may have changed: bring Matrix in line.
            self._applied_digest = outcome.digest
            asyncio.get_running_loop().create_task(self._auto_sync())

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
        report = await self.org.run(dry_run=bool(body.get("dry_run")))
        self._applied_digest = report.policy_digest
        return web.json_response(report.as_json())

    async def on_event(self, evt: Event) -> None:
        log.debug("event %s in %s", evt.type, getattr(evt, "room_id", "?"))
        if not self.recent.first_time(getattr(evt, "event_id", None)):
            return
        # Synapse may deliver events queued while we were down before our tables exist;
        # holding the transaction makes it wait (and retry) rather than lose them.
        await self.ready.wait()
        try:
            if evt.type == EventType.ROOM_MEMBER:
                await self._on_member(evt)  # type: ignore[arg-type]
            elif evt.type == EventType.ROOM_MESSAGE:
                await self._on_message(evt)  # type: ignore[arg-type]
                await self.oncall.on_message(
                    str(evt.room_id), str(evt.sender), str(evt.event_id), evt.content.serialize()
                )
            elif evt.type == EventType.REACTION:
                relates = evt.content.serialize().get("m.relates_to") or {}
                await self.oncall.on_reaction(str(evt.room_id), str(evt.sender), relates.get("event_id"))
            elif evt.type == EventType.RECEIPT:
                await self._on_receipt(evt)
        except Exception:
            log.exception("failed to handle %s in %s", evt.type, getattr(evt, "room_id", "?"))

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
            bool(member.serialize().get("is_direct")),
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
        elif command.name == "quiet" and command.args[:1] in (("on",), ("off",)):
            reply = await self.oncall.set_quiet(str(evt.sender), command.args[0] == "on")
        elif command.name == "ack":
            reply = (
                await self.oncall.ack_command(str(evt.sender), command.args[0])
                if len(command.args) == 1 else "Usage: !ack <alert id>  (the ID in brackets on the page, e.g. !ack 3F9A1C)"
            )
        elif command.name == "oncall":
            reply = await self._oncall_command(str(evt.sender), command.args)
        elif command.name in ("case", "decision", "images") and self.cases is not None:
            answer = await self.cases.command(str(evt.room_id), str(evt.sender), command.name, command.args)
            if answer is None:
                return
            reply = answer
        else:
            reply = reply_unknown(command.name)
        # Every message from the service carries its priority (docs/clinical.md); replies
        # to commands are routine.
        content = TextMessageEventContent(msgtype=MessageType.NOTICE, body=reply)
        content[PRIORITY_FIELD] = "routine"
        await self.appserv.intent.send_message_event(evt.room_id, EventType.ROOM_MESSAGE, content)

    async def _oncall_command(self, sender: str, args: tuple[str, ...]) -> str:
        """``!oncall [unit]`` lists who holds each role now and next; ``!oncall cover <role>
        until HH:MM [staff number]`` hands a role over until then."""
        if args and args[0] == "swap":
            if len(args) != 3:
                return "Usage: !oncall swap <role> <staff number>  (your next shift of the role for theirs)"
            return await self.oncall.swap_shifts(sender, args[1], args[2].upper())
        if args and args[0] == "cover":
            if len(args) < 4 or args[2] != "until":
                return "Usage: !oncall cover <role> until HH:MM [staff number]"
            try:
                hour, minute = (int(x) for x in args[3].split(":"))
                until = self.oncall.local_today(hour, minute)
            except ValueError:
                return f"'{args[3]}' is not a time like 14:00."
            staff = args[4] if len(args) > 4 else self.oncall.staff_of(sender)
            if staff is None:
                return "Name the staff number who covers."
            return await self.oncall.cover(sender, args[1], until, staff)
        return self.oncall.listing(args[0] if args else None)

    async def test_clock(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.config.as_token}":
            return web.json_response({"errcode": "M_FORBIDDEN", "error": "bad token"}, status=403)
        body = await request.json()
        self.oncall.clock.set(datetime.fromisoformat(body["now"]))
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

    async def health(self, _: web.Request) -> web.Response:
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
        if self.oncall.feed_errors:
            body["roster_feed_errors"] = self.oncall.feed_errors
        if self.org.last_report is not None:
            body["org_sync"] = {
                "policy_digest": self.org.last_report.policy_digest,
                "errors": len(self.org.last_report.errors),
            }
        return web.json_response(body, status=200 if ready else 503)

    @web.middleware
    async def readiness_gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Our HTTP endpoints (FHIR intake, alert state) read tables that exist only once
        start-up is done: a caller that comes early is told to come back, not served a 500."""
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
        """Edits are parsed in a thread (over a second for 5,000 staff): MLLP ACKs and the
        escalation tick keep running meanwhile."""
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
    db = Database.create(config.database, upgrade_table=PgASStateStore.upgrade_table, owner_name="carematrix")
    await db.start()  # mautrix's state cache tables
    await migrations.upgrade(db)  # ours
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
    bot = Bot(config, appserv, holder, org, oncall)
    bot.clinical = clinical
    bot.cases = cases
    holder.on_outcome = bot.on_policy_outcome
    appserv.matrix_event_handler(bot.on_event)
    appserv.transactions = NoTransactionIds()  # duplicates are recognised per event (appservice.dedupe)
    # mautrix annotates the alias query as returning JSON, yet awaits it (and ours is async).
    appserv.query_alias = oncall.query_alias  # type: ignore[assignment]
    appserv.app.router.add_get(ALERTS_PATH, clinical.alert_state)
    appserv.app.router.add_get(HEALTH_PATH, bot.health)
    appserv.app.middlewares.append(bot.readiness_gate)
    appserv.app.router.add_post(ORG_SYNC_PATH, bot.org_sync)
    if config.test_clock:
        appserv.app.router.add_post(TEST_CLOCK_PATH, bot.test_clock)

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
        hl7_server = await clinical.serve(config.hl7_host, config.hl7_port, config.mllp_limits) if config.hl7_port else None
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
        poller.cancel()
        for task in oncall_tasks:
            task.cancel()
        # They unwind before the HTTP session closes under them (a send cut off by the
        # closed session would be reported as a failure).
        await asyncio.gather(*oncall_tasks, return_exceptions=True)
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
