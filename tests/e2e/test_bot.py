"""The CareMatrix bot is registered through the appservice and answers in a DM."""

from __future__ import annotations

import asyncio

from nio import AsyncClient, RoomCreateError, RoomSendResponse

from tests.support import (
    RunningStack,
    eventually,
    log_files,
    log_problems,
    log_sizes,
    wait_for_event,
)


async def dm_with_bot(stack: RunningStack, client: AsyncClient) -> str:
    """A direct chat with the bot, once the bot has joined it."""
    created = await client.room_create(is_direct=True, invite=[stack.bot_user_id])
    assert not isinstance(created, RoomCreateError), created

    async def bot_joined() -> bool:
        members = await client.joined_members(created.room_id)
        return stack.bot_user_id in {m.user_id for m in members.members}

    await eventually(bot_joined)
    return created.room_id


async def test_bot_joins_a_dm_and_answers_ping(stack: RunningStack):
    nurse = await stack.login("n3002")
    try:
        dm = await dm_with_bot(stack, nurse)
        sent = await nurse.room_send(dm, "m.room.message", {"msgtype": "m.text", "body": "!ping"})
        assert isinstance(sent, RoomSendResponse), sent
        reply = await wait_for_event(
            nurse, dm, lambda e: e["sender"] == stack.bot_user_id and e["type"] == "m.room.message"
        )
        assert reply["content"]["msgtype"] == "m.notice"
        assert reply["content"]["body"].startswith("pong")
        assert reply["content"]["org.carematrix.priority"] == "routine"  # every bot message has one
    finally:
        await nurse.close()


async def test_bot_has_a_readable_display_name(stack: RunningStack):
    nurse = await stack.login("n3001")
    try:
        profile = await nurse.get_displayname(stack.bot_user_id)
        assert profile.displayname == "CareMatrix"
    finally:
        await nurse.close()


async def test_commands_sent_as_the_appservice_stops_are_all_answered_once_and_the_stop_logs_no_error(
    stack: RunningStack,
):
    """A restart (an upgrade, a policy of nightly restarts) must not drop a command: the ones
    being handled finish first, the ones arriving later wait in the homeserver."""
    nurse = await stack.login("n3001")
    try:
        dm = await dm_with_bot(stack, nurse)
        logs = [p for p in log_files(stack.deployment.settings.data_dir) if "appservice" in p.name]
        before = log_sizes(logs)
        for _ in range(PINGS):
            sent = await nurse.room_send(dm, "m.room.message", {"msgtype": "m.text", "body": "!ping"})
            assert isinstance(sent, RoomSendResponse), sent
        stack.stack.appservice.stop()  # SIGTERM, as the supervisor stops it
        stack.stack.restart_appservice()

        async def pongs() -> int:
            resp = await nurse.room_messages(dm, limit=100)
            return sum(1 for e in resp.chunk
                       if e.sender == stack.bot_user_id and e.source["content"].get("body", "").startswith("pong"))

        async def all_answered() -> bool:
            return await pongs() >= PINGS

        assert await eventually(all_answered, timeout=90)
        await asyncio.sleep(3)
        assert await pongs() == PINGS
        assert log_problems(before) == []
    finally:
        await nurse.close()


PINGS = 6
