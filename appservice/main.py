"""Run the CareMatrix appservice: bot account, commands, health endpoint, policy reload."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

from aiohttp import web
from mautrix.appservice import AppService
from mautrix.appservice.state_store.asyncpg import PgASStateStore
from mautrix.errors import MForbidden
from mautrix.types import Event, EventType, Membership, MessageEvent, StateEvent
from mautrix.util.async_db import Database

from appservice.audit_client import AuditClient
from appservice.commands import HELP, parse_command, reply_ping, reply_unknown
from appservice.config import AppserviceConfig, AppserviceConfigError
from appservice.org_sync import OrgSyncService
from carematrix.policy import PolicyInvalid
from carematrix.policy.holder import PolicyHolder, ReloadOutcome

log = logging.getLogger("carematrix.appservice")

HEALTH_PATH = "/_carematrix/health"
BOT_DISPLAY_NAME = "CareMatrix"
ORG_SYNC_PATH = "/_carematrix/org/sync"
POLICY_POLL_SECONDS = 2.0


class Bot:
    def __init__(
        self, config: AppserviceConfig, appserv: AppService, policy: PolicyHolder, org: OrgSyncService
    ) -> None:
        self.config = config
        self.appserv = appserv
        self.policy = policy
        self.org = org
        self.started_at = time.time()
        self.last_rejected: ReloadOutcome | None = None
        self._applied_digest = policy.current.digest

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
        try:
            if evt.type == EventType.ROOM_MEMBER:
                await self._on_member(evt)  # type: ignore[arg-type]
            elif evt.type == EventType.ROOM_MESSAGE:
                await self._on_message(evt)  # type: ignore[arg-type]
        except Exception:
            log.exception("failed to handle %s in %s", evt.type, getattr(evt, "room_id", "?"))

    async def _on_member(self, evt: StateEvent) -> None:
        if evt.state_key != self.appserv.bot_mxid or evt.content.membership != Membership.INVITE:
            return
        # Only hospital accounts may pull the bot into rooms.
        if evt.sender.split(":", 1)[1] != self.config.domain:
            log.warning("ignoring invite from non-local %s to %s", evt.sender, evt.room_id)
            return
        await self.appserv.intent.join_room(evt.room_id)
        log.info("joined %s on invite from %s", evt.room_id, evt.sender)

    async def _on_message(self, evt: MessageEvent) -> None:
        if evt.sender == self.appserv.bot_mxid or evt.sender.startswith("@role-"):
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
        else:
            reply = reply_unknown(command.name)
        await self.appserv.intent.send_notice(evt.room_id, reply)

    async def health(self, _: web.Request) -> web.Response:
        body = {
            "status": "ok" if self.appserv.ready else "starting",
            "bot": self.appserv.bot_mxid,
            "homeserver": self.config.homeserver_url,
            "policy_digest": self.policy.current.digest,
            "uptime_seconds": round(time.time() - self.started_at),
        }
        if self.last_rejected is not None:
            body["policy_rejected_edit"] = [str(e) for e in self.last_rejected.errors]
        if self.org.last_report is not None:
            body["org_sync"] = {
                "policy_digest": self.org.last_report.policy_digest,
                "errors": len(self.org.last_report.errors),
            }
        return web.json_response(body, status=200 if self.appserv.ready else 503)

    async def poll_policy(self) -> None:
        while True:
            await asyncio.sleep(POLICY_POLL_SECONDS)
            try:
                self.policy.refresh()
            except Exception:
                log.exception("policy refresh failed; keeping the policy in force")


async def run(config: AppserviceConfig) -> None:
    holder = PolicyHolder(config.policy_dir)
    db = Database.create(config.database, upgrade_table=PgASStateStore.upgrade_table, owner_name="carematrix")
    await db.start()
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
    org = OrgSyncService(
        db,
        holder,
        config.homeserver_url,
        config.as_token,
        config.domain,
        appserv.bot_mxid,
        config.initial_password,
        AuditClient(config.homeserver_url, config.as_token),
    )
    await org.setup()
    bot = Bot(config, appserv, holder, org)
    holder.on_outcome = bot.on_policy_outcome
    appserv.matrix_event_handler(bot.on_event)
    appserv.app.router.add_get(HEALTH_PATH, bot.health)
    appserv.app.router.add_post(ORG_SYNC_PATH, bot.org_sync)

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
        appserv.ready = True
        log.info("CareMatrix appservice ready as %s on %s:%d", appserv.bot_mxid, config.listen_host, config.listen_port)
        poller = asyncio.create_task(bot.poll_policy())
        await stop.wait()
        poller.cancel()
    finally:
        log.info("stopping")
        await appserv.stop()
        await db.stop()


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
        level=logging.INFO,
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
    return 0
