"""Org sync's bulk join: many staff into one newly created unit room in a few batches.

A new hospital has tens of thousands of memberships to create (every person in their unit
spaces, unit rooms and the hospital-wide rooms). Joined one by one, each membership costs a
whole event pipeline; here a room's members are stored as batches of join events, as
Synapse stores a new room's initial state. Only the org sync (the CareMatrix bot or a server
admin) may call it, only into a room that is still publicly joinable (org sync opens a room
for its initial members and locks it afterwards), and every user passes the same org-scope
check as a join of their own.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from synapse.module_api import SynapseRequest, make_deferred_yieldable
from twisted.internet import defer

from carematrix import identity
from carematrix.rules.membership import decide_membership
from synapse_modules.adapter.joins import build_joins, store_joins
from synapse_modules.async_resource import body_of
from synapse_modules.audit_writer import current_writer, held_records

if TYPE_CHECKING:
    from synapse_modules.policy_module import CareMatrixPolicy

POPULATE_PATH = "/_synapse/client/carematrix/org/joins"
BATCH_SIZE = 100  # joins per stored batch; Synapse stores a new room's initial state likewise
MAX_USERS = 5000  # per request


def _error(code: int, errcode: str, message: str) -> tuple[int, dict[str, str]]:
    return code, {"errcode": errcode, "error": message}


def parse_request(raw: bytes) -> tuple[str, list[str]]:
    """``{"room_id": "!…", "user_ids": ["@…", …]}``; user IDs deduplicated, order kept."""
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ValueError(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    room_id, user_ids = body.get("room_id"), body.get("user_ids")
    if not isinstance(room_id, str) or not room_id.startswith("!"):
        raise ValueError("'room_id' must be a room ID (!…)")
    if not isinstance(user_ids, list) or not user_ids or not all(isinstance(u, str) and u.startswith("@") for u in user_ids):
        raise ValueError("'user_ids' must be a non-empty list of user IDs (@…)")
    if len(user_ids) > MAX_USERS:
        raise ValueError(f"at most {MAX_USERS} user IDs per request, got {len(user_ids)}")
    return room_id, list(dict.fromkeys(user_ids))


class OrgPopulate:
    def __init__(self, policy: CareMatrixPolicy) -> None:
        self._policy = policy
        self._api = policy.api
        self._rooms_busy: dict[str, defer.DeferredLock] = {}

    async def handle(self, request: SynapseRequest) -> tuple[int, Any]:
        api = self._api
        caller = (await api.get_user_by_req(request)).user.to_string()
        if caller != self._policy.bot_user_id and not await api.is_user_admin(caller):
            return _error(403, "M_FORBIDDEN", "Only org sync (the CareMatrix bot or a server admin) may add members in bulk.")
        try:
            room_id, user_ids = parse_request(body_of(request))
        except ValueError as exc:
            return _error(400, "M_BAD_JSON", str(exc))
        # One bulk join per room at a time (in this process), and the room read under the same
        # lock: two chains of joins built on the same latest event would fork the room (and
        # Synapse would resolve its whole state to merge them), and a join repeated in a batch
        # would make Synapse drop that batch as a duplicate.
        lock = self._rooms_busy.setdefault(room_id, defer.DeferredLock())
        await make_deferred_yieldable(lock.acquire())
        try:
            return await self._populate(room_id, user_ids)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._rooms_busy.pop(room_id, None)

    async def _populate(self, room_id: str, user_ids: list[str]) -> tuple[int, Any]:
        api = self._api
        state = await api.get_room_state(
            room_id, [("m.room.join_rules", "")] + [("m.room.member", u) for u in user_ids]
        )
        rules = state.get(("m.room.join_rules", ""))
        if rules is None:
            return _error(404, "M_NOT_FOUND", f"No room {room_id} on this server.")
        if rules.content.get("join_rule") != "public":
            return _error(
                409, "M_BAD_STATE",
                "Bulk joins are only for a room org sync is populating (join rule public); "
                "add members to a locked room one by one.",
            )
        room = await self._policy.room_class_of(room_id)
        policy = self._policy.current_policy
        joins: list[tuple[str, dict[str, Any]]] = []
        already: list[str] = []
        refused: dict[str, str] = {}
        for user_id in user_ids:
            member = state.get(("m.room.member", user_id))
            membership = member.content.get("membership") if member is not None else None
            if membership == "join":
                already.append(user_id)
                continue
            if membership == "ban":
                refused[user_id] = "banned from this room"
                continue
            info = await api.get_userinfo_by_id(user_id) if api.is_mine(user_id) else None
            if info is None or info.is_deactivated:
                refused[user_id] = "no active account on this server"
                continue
            verdict = decide_membership(
                policy, room, self._policy.staff(user_id), self._policy.is_system(user_id), "join"
            )
            if not verdict.allowed:
                refused[user_id] = await self._policy.refuse(verdict, user_id, room_id, "join")
                continue
            profile = await api.get_profile_for_user(identity.localpart(user_id))
            content = {k: v for k, v in (("displayname", profile.display_name), ("avatar_url", profile.avatar_url)) if v}
            joins.append((user_id, content))
        writer = current_writer()
        for start in range(0, len(joins), BATCH_SIZE):
            # Each join's audit record is made as the event is built; all of a batch's
            # records are written in one transaction before the batch is stored.
            with held_records() as records:
                batch = await build_joins(api, room_id, joins[start : start + BATCH_SIZE])
            if writer is not None:
                await writer.record_many(records)
            await store_joins(api, batch)
        return 200, {"joined": [u for u, _ in joins], "already": already, "refused": refused}
