"""Synapse module: enforces room classes from the hospital policy.

Registered as ``synapse_modules.policy_module.CareMatrixPolicy`` in homeserver.yaml. The
policy directory is polled on every worker, so an admin's edit takes effect without a
restart; a broken edit is rejected and the last good policy stays in force.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from synapse.module_api import NOT_SPAM, EventBase, ModuleApi, Requester
from synapse.module_api.errors import Codes, ConfigError, SynapseError
from twisted.web.resource import Resource
from twisted.web.server import Request

from carematrix import identity
from carematrix.audit import actions as A
from carematrix.audit.matrix_events import record_for_event
from carematrix.audit.record import AuditRecord
from carematrix.policy.holder import ReloadOutcome
from carematrix.policy.model import Policy
from carematrix.policy.org import Staff
from carematrix.policy.rooms import ROOM_CLASS_EVENT, RoomClassState
from carematrix.rules import Verdict
from carematrix.rules.creation import decide_create
from carematrix.rules.directory import decide_publish
from carematrix.rules.display_name import decide_display_name, decide_profile_name
from carematrix.rules.membership import decide_membership
from carematrix.rules.protection import decide_priority
from carematrix.rules.push import gateway_notification
from carematrix.rules.room_class import decide_class_change, decide_post, decide_state_change
from synapse_modules import hs_schema, loop_lag, policy_source
from synapse_modules.adapter.errors import refusal_with_reason
from synapse_modules.adapter.events import install_event_check
from synapse_modules.adapter.homeserver import events_position
from synapse_modules.adapter.listeners import deepen_listen_backlog
from synapse_modules.adapter.media import install_media_gate
from synapse_modules.adapter.profile import install_display_name_guard
from synapse_modules.adapter.push import install_push_filter
from synapse_modules.adapter.search import (
    install_cjk_search,
    reindex_if_needed,
    runs_background_tasks,
)
from synapse_modules.async_resource import AsyncJsonResource
from synapse_modules.audit_writer import current_writer
from synapse_modules.config import PolicyModuleConfig
from synapse_modules.org_populate import POPULATE_PATH, OrgPopulate
from synapse_modules.protection import ContentProtection

log = logging.getLogger(__name__)

FAILED_CLOSED = Verdict(
    False,
    "internal.error",
    "无法核对医院策略，为安全起见此操作已被拒绝。请重试或联系信息科。"
    " The hospital policy could not be checked, so this action was refused for safety. "
    "Please try again or contact IT.",
)

T = TypeVar("T")

POLICY_STATUS_PATH = "/_synapse/client/carematrix/policy"
CLASS_CACHE_SIZE = 100_000
CLASS_CACHE_SECONDS = 30.0
CLASS_CHANGE_SETTLE_SECONDS = 10.0


def _fail_closed(refusal: Callable[[], T]) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """An unexpected error in a check must refuse the action, never let it through. The
    person gets :data:`FAILED_CLOSED` (Chinese first, rule ``internal.error``); the log's
    ERROR line names the check and the error itself on its first line, so whoever reads the
    log sees why without reading the traceback below it."""

    def wrap(func: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(func)
        async def guarded(*args: Any, **kwargs: Any) -> T:
            try:
                return await func(*args, **kwargs)
            except SynapseError:
                raise
            except Exception as exc:
                log.exception(
                    "CareMatrix policy check %s failed (%s); refused with rule %s",
                    func.__name__, _what_failed(exc), FAILED_CLOSED.rule,
                )
                return refusal()

        return guarded

    return wrap


def _what_failed(exc: BaseException) -> str:
    """The error's type and the first line of its message (a database error's message
    runs on over several lines)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _raise_refusal() -> None:
    raise SynapseError(403, FAILED_CLOSED.message(), Codes.FORBIDDEN)


class CareMatrixPolicy:
    def __init__(self, config: PolicyModuleConfig, api: ModuleApi) -> None:
        self._config = config
        self._api = api
        loop_lag.start(api.worker_name or "main")
        # The process's one copy of the policy (loaded when this config was read), polled
        # for edits that are parsed off the reactor.
        self._holder = policy_source.keep_fresh(api, config.policy_dir, config.reload_interval_seconds * 1000)
        self._holder.on_outcome = self._on_reload
        log.info(
            "CareMatrix policy %s in force from %s",
            self._holder.current.digest[:12],
            config.policy_dir,
        )
        api.register_spam_checker_callbacks(
            check_event_for_spam=self.check_event_for_spam,
            user_may_join_room=self.user_may_join_room,
            user_may_invite=self.user_may_invite,
            user_may_publish_room=self.user_may_publish_room,
        )
        # No on_new_event callback: Synapse loads a room's full state for it before
        # notifying clients of every event, which would slow every message down.
        api.register_third_party_rules_callbacks(on_create_room=self.on_create_room)
        install_event_check("carematrix_real_names", self.keep_real_name)
        install_display_name_guard(self.guard_display_name)
        # Behind the worker deployment's proxy, a burst of requests must wait to be accepted,
        # not be refused with a 502 (synapse_modules/adapter/listeners.py).
        deepen_listen_backlog()
        # Names, units and messages found by their Chinese words (docs/search.md): index and
        # query cut Chinese text alike; rows indexed by an older release are re-indexed once.
        install_cjk_search()
        if runs_background_tasks(api):
            api.run_as_background_process(
                "carematrix_search_reindex", reindex_if_needed, api, hs_schema.gate(api).ready
            )
        self._class_cache: OrderedDict[str, tuple[RoomClassState, float]] = OrderedDict()
        self._class_changing: dict[str, float] = {}
        api.register_web_resource(POLICY_STATUS_PATH, PolicyStatusResource(self))
        api.register_web_resource(
            POPULATE_PATH, AsyncJsonResource(api, "carematrix_org_populate", post=OrgPopulate(self).handle)
        )
        self._protection = ContentProtection(
            api, self._holder, self.is_system, config.watermark_key, config.watermark_cache_dir,
            media_store=str(config.media_store_path) if config.media_store_path else None,
        )
        # Every media download of this process passes the gate (protected files only are
        # handled by it; everything else goes to Synapse untouched).
        install_media_gate(self._protection)
        # No room name, sender name or text on a push notification, whatever format the
        # phone registered its pusher with (carematrix/rules/push.py).
        install_push_filter(gateway_notification)
        # Burns run on the one instance that runs background tasks (the main process unless
        # configured otherwise); their state is in the database.
        api.looping_background_call(
            self._protection.burn_tick, config.burn_interval_seconds * 1000, desc="carematrix_burn"
        )
        api.looping_background_call(
            self._protection.evict_cache, 60_000, desc="carematrix_watermark_cache", run_on_all_instances=True
        )

    @staticmethod
    def parse_config(config: dict[str, Any]) -> PolicyModuleConfig:
        try:
            return PolicyModuleConfig.from_config(config)
        except ValueError as exc:
            raise ConfigError(f"CareMatrix policy module: {exc}") from exc

    def status(self) -> dict[str, Any]:
        """What this worker enforces, for ``carematrix status`` (no policy content)."""
        last = self._holder.last_outcome
        rejected = last if last is not None and not last.accepted else None
        return {
            "digest": self._holder.current.digest,
            "worker": self._api.worker_name or "main",
            "last_edit_rejected": rejected is not None,
            "rejected_error_count": len(rejected.errors) if rejected else 0,
            # The worker deployment: which process runs background work (burns, audit
            # checkpoints, retention) and how far it has seen the event stream.
            "background_tasks": self._api.should_run_background_tasks(),
            "events_position": events_position(self._api),
        }

    def _on_reload(self, outcome: ReloadOutcome) -> None:
        writer = current_writer()
        if writer is not None:
            writer.record_soon(
                AuditRecord(
                    actor="carematrix", action=A.POLICY_RELOAD if outcome.accepted else A.POLICY_RELOAD_REJECTED,
                    object=str(self._config.policy_dir), outcome=A.SUCCESS if outcome.accepted else A.FAILURE,
                    process=writer.process,
                    details={"digest": outcome.digest, "errors": len(outcome.errors)},
                )
            )
        if not outcome.accepted:
            for error in outcome.errors:
                log.error("policy edit rejected: %s", error)

    @property
    def api(self) -> ModuleApi:
        return self._api

    @property
    def bot_user_id(self) -> str:
        return self._config.bot_user_id

    @property
    def current_policy(self) -> Policy:
        return self._holder.current

    def is_system(self, user_id: str) -> bool:
        """The bot and the appservice's role users act for the hospital, not a person."""
        return identity.is_system_account(user_id, self._config.bot_user_id, self._api.server_name)

    def staff(self, user_id: str) -> Staff | None:
        local = identity.local_localpart(user_id, self._api.server_name)
        return self._holder.current.staff_for_localpart(local) if local is not None else None

    async def room_class_of(self, room_id: str) -> RoomClassState:
        """Room classes are set at creation and only the bot may change one, so checks read
        them from a short-lived per-process cache. Rooms without a class are never cached
        (a new room's class event may not be stored yet when its first events are checked),
        and a room whose class is being changed is not cached until the change has landed;
        other workers see a bot's class change within ``CLASS_CACHE_SECONDS``."""
        now = time.monotonic()
        hit = self._class_cache.get(room_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        state = await self._api.get_room_state(room_id, [(ROOM_CLASS_EVENT, "")])
        event = state.get((ROOM_CLASS_EVENT, ""))
        if event is None:
            return RoomClassState()
        value = RoomClassState.from_content(event.content)
        if self._class_changing.get(room_id, 0) < now:
            self._class_cache[room_id] = (value, now + CLASS_CACHE_SECONDS)
            self._class_cache.move_to_end(room_id)
            if len(self._class_cache) > CLASS_CACHE_SIZE:
                self._class_cache.popitem(last=False)
        return value

    def _forget_class(self, room_id: str) -> None:
        self._class_cache.pop(room_id, None)
        self._class_changing[room_id] = time.monotonic() + CLASS_CHANGE_SETTLE_SECONDS

    async def _member_count(self, room_id: str) -> int:
        state = await self._api.get_room_state(room_id, [("m.room.member", None)])
        # Service accounts (the bot, on-duty role accounts) do not take a person's place:
        # a DM to a role stays a DM when the role brings the doctor on duty in.
        return sum(
            1
            for e in state.values()
            if e.content.get("membership") in ("join", "invite") and not self.is_system(e.state_key)
        )

    async def refuse(self, verdict: Verdict, user_id: str, room_id: str | None, action: str) -> str:
        """Log and audit a denial (before the client hears of it); returns the message."""
        log.info("policy denial rule=%s user=%s room=%s action=%s", verdict.rule, user_id, room_id, action)
        writer = current_writer()
        if writer is not None:
            await writer.record(
                AuditRecord(
                    actor=user_id, action=A.POLICY_DENIED, object=action[:200], room=room_id,
                    outcome=A.DENIED, rule=verdict.rule or "unknown", process=writer.process,
                )
            )
        return verdict.message()

    @staticmethod
    def _record_of(event: EventBase, process: str) -> AuditRecord:
        return record_for_event(
            event_type=event.type, sender=event.sender, room_id=event.room_id,
            event_id=event.event_id, state_key=event.get_state_key(),
            content=event.content, process=process,
        )

    async def keep_real_name(self, event: EventBase) -> bool:
        """A member event of one's own is held to the real-name rule (carematrix/rules/
        display_name.py); a refusal carries the rule."""
        if event.type != "m.room.member" or event.sender != event.get_state_key():
            return True
        policy = self._holder.current
        staff = self.staff(event.sender)
        verdict = decide_display_name(policy, staff, event.content)
        if not verdict.allowed:
            profile = await self._api.get_profile_for_user(identity.localpart(event.sender))
            verdict = decide_display_name(policy, staff, event.content, profile.display_name)
        if verdict.allowed:
            return True
        message = await self.refuse(verdict, event.sender, event.room_id, "per-room display name")
        raise SynapseError(403, message, Codes.FORBIDDEN)

    async def guard_display_name(self, user_id: str, name: Any) -> Verdict:
        """A person changing their own global display name (synapse_modules/adapter/
        profile.py): held to the real-name rule, a refusal on record with the rule."""
        verdict = decide_profile_name(self._holder.current, self.staff(user_id), name)
        if not verdict.allowed:
            await self.refuse(verdict, user_id, None, "display name")
        return verdict

    @_fail_closed(FAILED_CLOSED.message)
    async def check_event_for_spam(self, event: EventBase) -> Any:
        if not self._api.is_mine(event.sender):
            # Federation is off by default; remote events are judged by their own servers.
            return NOT_SPAM
        policy = self._holder.current
        is_system = self.is_system(event.sender)
        room = await self.room_class_of(event.room_id)
        if event.is_state() and event.type == ROOM_CLASS_EVENT:
            self._forget_class(event.room_id)
            verdict = decide_class_change(
                policy,
                room.class_id,
                event.content.get("class"),
                self.staff(event.sender),
                is_system,
                event.content.get("unit"),
            )
        elif event.is_state():
            verdict = decide_state_change(policy, room, event.type, event.content, is_system)
        else:
            verdict = decide_post(policy, room.class_id, self.staff(event.sender), event.type, is_system)
            if verdict.allowed:
                verdict = decide_priority(event.content, is_system)
        if not verdict.allowed:
            return await self.refuse(verdict, event.sender, event.room_id, event.type)
        rc = policy.room_classes.get(room.class_id or "")
        # An accepted event is on record before Synapse stores it and answers the client:
        # inside the no-forward check's transaction when it has one, else on its own.
        writer = current_writer()
        also = record = None
        if writer is not None:
            await writer.ready()
            record = self._record_of(event, writer.process)
            also = functools.partial(writer.append_in, records=[record])
        refusal, hash_prints, recorded = await self._protection.check_send(event, rc, also)
        if refusal is not None:
            return await self.refuse(refusal, event.sender, event.room_id, event.type)
        if writer is not None and record is not None and not recorded:
            await writer.record(record)
        await self._protection.after_accept(event, rc, hash_prints)
        return NOT_SPAM

    @_fail_closed(lambda: refusal_with_reason(FAILED_CLOSED))
    async def user_may_join_room(self, user_id: str, room_id: str, is_invited: bool) -> Any:
        verdict = decide_membership(
            self._holder.current,
            await self.room_class_of(room_id),
            self.staff(user_id),
            self.is_system(user_id),
            "join",
        )
        if verdict.allowed:
            return NOT_SPAM
        await self.refuse(verdict, user_id, room_id, "join")
        return refusal_with_reason(verdict)

    @_fail_closed(lambda: refusal_with_reason(FAILED_CLOSED))
    async def user_may_invite(self, inviter: str, invitee: str, room_id: str) -> Any:
        room = await self.room_class_of(room_id)
        policy = self._holder.current
        rc = policy.room_classes.get(room.class_id or "")
        # An on-duty role bringing the next person of an escalation into a DM is not a
        # member growing the chat: the size limit binds people, not the service.
        limited = rc is not None and rc.max_members and not self.is_system(inviter)
        count = await self._member_count(room_id) if limited else 0
        verdict = decide_membership(
            policy, room, self.staff(invitee), self.is_system(invitee), "invite", count
        )
        if verdict.allowed:
            return NOT_SPAM
        await self.refuse(verdict, inviter, room_id, f"invite {invitee}")
        return refusal_with_reason(verdict)

    @_fail_closed(lambda: refusal_with_reason(FAILED_CLOSED))
    async def user_may_publish_room(self, user_id: str, room_id: str) -> Any:
        verdict = decide_publish(self.is_system(user_id))
        if verdict.allowed:
            return NOT_SPAM
        await self.refuse(verdict, user_id, room_id, "publish")
        return refusal_with_reason(verdict)

    @_fail_closed(_raise_refusal)
    async def on_create_room(
        self, requester: Requester, request_content: dict, is_requester_admin: bool
    ) -> None:
        user_id = requester.user.to_string()
        policy = self._holder.current
        invitees = [
            (self.staff(u), self.is_system(u))
            for u in request_content.get("invite") or []
            if isinstance(u, str)
        ]
        decision = decide_create(
            policy, request_content, self.staff(user_id), self.is_system(user_id), invitees
        )
        if not decision.verdict.allowed:
            raise SynapseError(
                403, await self.refuse(decision.verdict, user_id, None, "createRoom"), Codes.FORBIDDEN
            )
        if decision.add_class_event and decision.room.class_id:
            # First, so the protection state after it is judged against the class.
            request_content.setdefault("initial_state", []).insert(
                0, {"type": ROOM_CLASS_EVENT, "state_key": "", "content": decision.room.content()}
            )
        rc = policy.room_classes.get(decision.room.class_id or "")
        if rc is not None and not request_content.get("is_direct"):
            # Element users see the class in the topic, not only in room state.
            topic = request_content.get("topic")
            prefix = rc.topic_prefix
            if not (isinstance(topic, str) and topic.startswith(prefix)):
                request_content["topic"] = f"{prefix} {topic}" if isinstance(topic, str) and topic else prefix


class PolicyStatusResource(Resource):
    isLeaf = True

    def __init__(self, module: CareMatrixPolicy) -> None:
        super().__init__()
        self._module = module

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 - twisted naming
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps(self._module.status()).encode()
