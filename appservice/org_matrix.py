"""Org sync's Matrix side: observe the homeserver and carry out a plan, step by step, over
the client and admin APIs as the CareMatrix bot (a server admin) — which call each planned
action is, in what order and how many at once. The calls go through mautrix's client
(appservice.homeserver)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from appservice.homeserver import Homeserver, HomeserverUnreachable, MatrixCallFailed
from carematrix import identity
from carematrix.org.plan import (
    POPULATING_JOIN_RULE,
    Action,
    Desired,
    DesiredRoom,
    Observed,
    ObservedUser,
)
from carematrix.policy.rooms import ROOM_CLASS_EVENT

log = logging.getLogger(__name__)

CONCURRENCY = 8
USERS_PAGE = 200  # accounts per admin-API page (list_users says why)
POLICY_STATUS_PATH = "/_synapse/client/carematrix/policy"  # synapse_modules.policy_module
POPULATE_PATH = "/_synapse/client/carematrix/org/joins"  # synapse_modules.org_populate
POPULATE_CHUNK = 1000  # members per bulk-join request
ORG_ROOM_FIELD = "org.carematrix.org_room"  # create-event content: the org room's alias


def _round_robin_by_room(actions: list[Action]) -> list[Action]:
    """Synapse serialises events per room but persists different rooms in parallel, so
    concurrent joins should go to different rooms."""
    by_room: dict[str, list[Action]] = {}
    for a in actions:
        by_room.setdefault(a.detail, []).append(a)
    queues = list(by_room.values())
    out: list[Action] = []
    while queues:
        out += [q.pop(0) for q in queues]
        queues = [q for q in queues if q]
    return out


class OrgMatrix:
    """One sync's view of the homeserver: the room IDs it found or made, by alias."""

    def __init__(self, homeserver: Homeserver, bot_user_id: str) -> None:
        self.hs = homeserver
        self.bot = bot_user_id
        self.room_ids: dict[str, str] = {}  # alias localpart -> room ID
        self.populating: set[str] = set()  # aliases of rooms still open for their initial members
        self.phase_seconds: dict[str, float] = {}  # how long each step of the last apply took

    async def _gather(self, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def run(job: Callable[[], Awaitable[Any]]) -> Any:
            async with gate:
                return await job()

        return await asyncio.gather(*(run(j) for j in jobs))

    # -- observe -------------------------------------------------------------------------

    async def list_users(self) -> dict[str, ObservedUser]:
        """Every account, in pages of ``USERS_PAGE``: Synapse builds a page in one go on its
        reactor (and this loop decodes it in one go), so the page size bounds the stall each
        side has while org sync reads 5,000 accounts after a policy edit."""
        users: dict[str, ObservedUser] = {}
        token: str | None = "0"
        while token is not None:
            page = await self.hs.call(
                "GET", f"/_synapse/admin/v2/users?from={token}&limit={USERS_PAGE}&deactivated=true&guests=false"
            )
            for entry in page.get("users", []):
                user_id = entry["name"]
                local = identity.local_localpart(user_id, self.hs.server)
                if local is None:
                    continue
                users[local] = ObservedUser(entry.get("displayname"), bool(entry.get("deactivated")))
            token = page.get("next_token")
        return users

    async def _room_members(self, alias: str) -> tuple[str, set[str], str] | None:
        try:
            room_id = (await self.hs.call("GET", f"/_matrix/client/v3/directory/room/{quote('#' + alias + ':' + self.hs.server)}"))["room_id"]
        except MatrixCallFailed as exc:
            if exc.status == 404:
                return None
            raise
        joined = (await self.hs.call("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/joined_members"))["joined"]
        members = {
            local
            for uid in joined
            if not identity.is_system_account(uid, self.bot, self.hs.server) and (local := identity.local_localpart(uid, self.hs.server))
        }
        join_rules = await self.hs.call("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.join_rules")
        return room_id, members, str(join_rules.get("join_rule"))

    async def wait_for_policy(self, digest: str, timeout: float = 15.0) -> None:
        """The homeserver's policy module polls the policy files on its own; its scope checks
        refuse joins the new policy allows until it enforces the same policy as we plan by."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                status = await self.hs.call("GET", POLICY_STATUS_PATH)
            except MatrixCallFailed:
                return  # no policy module (or an older one): nothing to wait for
            if status.get("digest") == digest or asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.2)

    async def observe(self, desired: Desired, managed: set[str]) -> Observed:
        if desired.policy_digest:
            await self.wait_for_policy(desired.policy_digest)
        observed = Observed(users=await self.list_users(), managed=set(managed))
        aliases = [r.alias for r in desired.rooms]
        results = await self._gather([functools.partial(self._room_members, a) for a in aliases])
        for alias, found in zip(aliases, results, strict=True):
            if found is not None:
                self.room_ids[alias], observed.rooms[alias], observed.join_rules[alias] = found
                if observed.join_rules[alias] == POPULATING_JOIN_RULE:
                    self.populating.add(alias)
        return observed

    # -- apply ---------------------------------------------------------------------------

    async def create_room(self, room: DesiredRoom) -> None:
        initial_state: list[dict[str, Any]] = [
            {"type": ROOM_CLASS_EVENT, "state_key": "", "content": room.room.content()},
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "shared"}},
            # Until its initial members are in (then the plan's "lock" makes it invite-only):
            # a forced join into a public room is one event, into an invite-only room two.
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": POPULATING_JOIN_RULE}},
        ]
        parent_id = self.room_ids.get(room.parent_alias) if room.parent_alias else None
        if parent_id:
            initial_state.append(
                {"type": "m.space.parent", "state_key": parent_id, "content": {"via": [self.hs.server], "canonical": True}}
            )
        # From room version 12 a room's ID is the hash of its create event, and rooms the bot
        # creates side by side in one millisecond would otherwise have identical ones (Synapse
        # then retries, logging an error per collision). The alias tells them apart.
        creation: dict[str, Any] = {"m.federate": False, ORG_ROOM_FIELD: room.alias}
        if room.is_space:
            creation["type"] = "m.space"
        body = {
            "room_alias_name": room.alias,
            "name": room.name,
            "topic": room.topic,
            "preset": "private_chat",
            "visibility": "private",
            "creation_content": creation,
            "initial_state": initial_state,
            "power_level_content_override": {"events_default": 0, "state_default": 50, "invite": 50, "kick": 50, "ban": 50, "redact": 50},
        }
        room_id = (await self.hs.call("POST", "/_matrix/client/v3/createRoom", body))["room_id"]
        self.room_ids[room.alias] = room_id
        self.populating.add(room.alias)
        if parent_id:
            await self.hs.call(
                "PUT",
                f"/_matrix/client/v3/rooms/{quote(parent_id)}/state/m.space.child/{quote(room_id)}",
                {"via": [self.hs.server]},
            )

    def _request(self, a: Action, initial_password: str | None) -> tuple[str, str, dict[str, Any]]:
        """The one HTTP call that carries out ``a`` (room creation aside)."""
        if a.kind in ("create_account", "reactivate", "update_name"):
            body: dict[str, Any] = {"displayname": a.detail}
            if a.kind != "update_name":
                body["deactivated"] = False
                if initial_password:
                    body["password"] = initial_password
            return "PUT", f"/_synapse/admin/v2/users/{quote(self.hs.uid(a.target))}", body
        if a.kind == "deactivate":
            return "POST", f"/_synapse/admin/v1/deactivate/{quote(self.hs.uid(a.target))}", {"erase": False}
        if a.kind == "join":
            return "POST", f"/_synapse/admin/v1/join/{quote(self.room_ids[a.detail])}", {"user_id": self.hs.uid(a.target)}
        if a.kind == "kick":
            room = quote(self.room_ids[a.detail])
            reason = "No longer in this unit (org sync)"
            return "POST", f"/_matrix/client/v3/rooms/{room}/kick", {"user_id": self.hs.uid(a.target), "reason": reason}
        if a.kind == "lock":
            path = f"/_matrix/client/v3/rooms/{quote(self.room_ids[a.target])}/state/m.room.join_rules/"
            return "PUT", path, {"join_rule": "invite"}
        raise ValueError(f"no request for {a.kind}")

    async def _bulk_join(self, joins: list[Action], errors: list[str]) -> list[Action]:
        """Joins into rooms org sync is populating, many per request (synapse_modules/
        org_populate.py). Returns the joins left to make one by one: all of them on a
        homeserver without that endpoint, and those of a request that failed as a whole."""
        by_room: dict[str, list[Action]] = {}
        for a in joins:
            by_room.setdefault(a.detail, []).append(a)
        left: list[Action] = []

        async def populate(group: list[Action]) -> None:
            # One room's chunks one after the other: concurrent batches into one room would
            # fork its history, and Synapse would resolve the room's whole state to merge them.
            for i in range(0, len(group), POPULATE_CHUNK):
                chunk = group[i : i + POPULATE_CHUNK]
                body = {"room_id": self.room_ids[chunk[0].detail], "user_ids": [self.hs.uid(a.target) for a in chunk]}
                try:
                    result = await self.hs.call("POST", POPULATE_PATH, body)
                except (MatrixCallFailed, HomeserverUnreachable) as exc:
                    if not (isinstance(exc, MatrixCallFailed) and exc.errcode == "M_UNRECOGNIZED"):
                        log.warning("bulk join into #%s failed (%s); joining one by one", chunk[0].detail, exc)
                    left.extend(chunk)
                    continue
                refused = result.get("refused") or {}
                for a in chunk:
                    if self.hs.uid(a.target) in refused:
                        errors.append(f"{a.describe()}: refused: {refused[self.hs.uid(a.target)]}")

        # Biggest rooms first, so that they do not trail at the end.
        groups = sorted(by_room.values(), key=len, reverse=True)
        await self._gather([functools.partial(populate, g) for g in groups])
        return left

    async def apply(self, actions: list[Action], initial_password: str | None) -> list[str]:
        """Apply in dependency order; returns the actions that failed (with the reason)."""
        errors: list[str] = []

        async def attempt(action: Action, job: Callable[[], Awaitable[Any]]) -> None:
            try:
                await job()
            except (MatrixCallFailed, HomeserverUnreachable) as exc:
                errors.append(f"{action.describe()}: {exc}")

        async def send(action: Action) -> None:
            await attempt(action, lambda: self.hs.call(*self._request(action, initial_password)))

        async def run_all(batch: list[Action]) -> None:
            await self._gather([functools.partial(send, a) for a in batch])

        def of_kind(*kinds: str) -> list[Action]:
            return [a for a in actions if a.kind in kinds]

        clock = asyncio.get_running_loop().time

        async def timed(phase: str, step: Callable[[], Awaitable[None]]) -> None:
            started = clock()
            await step()
            self.phase_seconds[phase] = round(clock() - started, 2)

        async def accounts() -> None:
            await run_all(of_kind("create_account", "reactivate", "update_name"))
            await run_all(of_kind("deactivate"))

        async def create(action: Action) -> None:
            room = action.room
            if room is None:  # the plan gives every create_room action its room
                errors.append(f"{action.describe()}: no room to create")
                return
            await attempt(action, lambda: self.create_room(room))

        async def rooms() -> None:
            # Parents first (a child needs its parent's room ID), siblings side by side.
            pending = of_kind("create_room")
            while pending:
                ready = [a for a in pending if a.room is None or a.room.parent_alias is None or a.room.parent_alias in self.room_ids
                         or a.room.parent_alias not in {p.target for p in pending}]
                ready = ready or pending  # never stall (a tree has no cycles; this is a guard)
                pending = [a for a in pending if a not in ready]
                await self._gather([functools.partial(create, a) for a in ready])

        async def joins() -> None:
            wanted = [a for a in of_kind("join") if a.detail in self.room_ids]
            single = await self._bulk_join([a for a in wanted if a.detail in self.populating], errors)
            await run_all(_round_robin_by_room(single + [a for a in wanted if a.detail not in self.populating]))

        async def kicks_and_locks() -> None:
            await run_all([a for a in of_kind("kick") if a.detail in self.room_ids])
            await run_all([a for a in of_kind("lock") if a.target in self.room_ids])

        # Accounts and rooms do not depend on each other: side by side.
        await asyncio.gather(timed("accounts", accounts), timed("rooms", rooms))
        await timed("joins", joins)
        await timed("kicks and locks", kicks_and_locks)
        return errors
