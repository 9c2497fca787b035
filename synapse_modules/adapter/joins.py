"""Many joins into one room as one batch (org sync populating a new room)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from synapse.module_api import ModuleApi

from synapse_modules.adapter.homeserver import homeserver

MEMBER = "m.room.member"


@dataclass
class JoinBatch:
    """Join events built for one room, in a chain, not stored yet."""

    room_id: str
    start_state_group: int
    events: list[tuple[Any, Any]]  # (event, unpersisted context)
    final_state: dict[tuple[str, str], str]  # the room's state after the last event
    prior: list[str | None] = field(default_factory=list)  # each joiner's membership event before


async def build_joins(api: ModuleApi, room_id: str, joins: list[tuple[str, dict[str, Any]]]) -> JoinBatch:
    """Build join events for many local users in one room as one linear chain, the way
    Synapse builds a new room's initial state: each on the state the previous one leaves.
    ``store_joins`` then stores the chain in one go. One join at a time costs a whole event
    pipeline per member; a batch costs one.

    Each event passes Synapse's auth rules and the event checks (real names, the audit
    record) as it is built; clients, appservices, push, the user directory and room
    statistics learn of it from the event stream as usual once it is stored. The caller has
    checked the org scope of every user and that the room is publicly joinable, and passes
    users who are not joined yet (a join identical to the current state would make Synapse
    drop the whole batch as a duplicate).
    """
    from synapse.types import create_requester

    hs = homeserver(api)
    creator = hs.get_event_creation_handler()
    storage = hs.get_storage_controllers()
    extremities = await hs.get_datastores().main.get_forward_extremities_for_room(room_id)
    prev_event_id = max(extremities, key=lambda x: x[2])[0]  # the deepest: (event ID, state group, depth, ...)
    state_group = (await storage.state.get_state_group_for_events([prev_event_id]))[prev_event_id]
    state_map = dict(await storage.state.get_state_ids_for_group(state_group))
    batch = JoinBatch(room_id, state_group, [], state_map)
    depth = None
    for user_id, content in joins:
        event, context = await creator.create_event(
            create_requester(user_id, authenticated_entity=hs.hostname),
            {"type": MEMBER, "room_id": room_id, "sender": user_id, "state_key": user_id,
             "content": {**content, "membership": "join"}},
            prev_event_ids=[prev_event_id],
            depth=depth,
            state_map=dict(state_map),
            for_batch=True,
            require_consent=False,
        )
        batch.events.append((event, context))
        batch.prior.append(state_map.get((event.type, event.state_key)))
        prev_event_id, depth = event.event_id, event.depth + 1
        state_map[(event.type, event.state_key)] = event.event_id
    return batch


async def store_joins(api: ModuleApi, batch: JoinBatch) -> list[int]:
    """Store a chain from ``build_joins``: its state groups, then its events, in one go.
    Returns the new state groups, one per event."""
    if not batch.events:
        return []
    from synapse.events.snapshot import UnpersistedEventContext
    from synapse.types import UserID, create_requester

    hs = homeserver(api)
    state_store = hs.get_datastores().state
    persisted = await UnpersistedEventContext.batch_persist_unpersisted_contexts(
        batch.events, batch.room_id, batch.start_state_group, state_store
    )
    groups: list[int] = []
    for event, context in persisted:
        if context.state_group is None:  # persisting gives every event its state group
            raise RuntimeError(f"join {event.event_id} was stored without a state group")
        groups.append(context.state_group)
    remember_state_groups(state_store, batch, groups)
    joiners = [e.sender for e, _ in batch.events]
    await hs.get_event_creation_handler().handle_new_client_event(
        create_requester(joiners[0], authenticated_entity=hs.hostname),
        persisted,
        ratelimit=False,
        extra_users=[UserID.from_string(u) for u in joiners],
        ignore_shadow_ban=True,
    )
    return groups


def remember_state_groups(state_store: Any, batch: JoinBatch, groups: list[int]) -> None:
    """Put what is known of the batch's new state groups in Synapse's state group caches.
    Each group is stored as a one-event delta on the one before, and whoever asks next (the
    duplicate check and push rules for every event, the current-state update for the
    batch) would otherwise walk that chain back through the database. A state group never
    changes, so the entries cannot go stale.

    Every group gets its non-member state (a join changes none of it) and the two
    memberships asked about: its own joiner's and the next joiner's. Only the last group
    gets the whole member list, as the next batch and the current-state update read it
    whole: 100 full copies of a 5,000-member list per batch would flush the cache.
    """
    state = batch.final_state
    others = {k: v for k, v in state.items() if k[0] != MEMBER}
    members_cache, others_cache = state_store._state_group_members_cache, state_store._state_group_cache
    seq_members, seq_others = members_cache.sequence, others_cache.sequence
    joiners = [(MEMBER, e.state_key) for e, _ in batch.events]
    for i, group in enumerate(groups):
        others_cache.update(seq_others, key=group, value=dict(others))
        if i == len(groups) - 1:
            members_cache.update(seq_members, key=group, value={k: v for k, v in state.items() if k[0] == MEMBER})
            continue
        # After event i: joiners up to i are in; the next joiner's membership is what it was.
        known = {joiners[i]: batch.events[i][0].event_id}
        upcoming, before = joiners[i + 1], batch.prior[i + 1]
        if before is not None:
            known[upcoming] = before
        members_cache.update(seq_members, key=group, value=known, fetched_keys={joiners[i], upcoming})
