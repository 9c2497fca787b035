"""The CareMatrix bot is registered through the appservice and answers in a DM."""

from __future__ import annotations

from nio import RoomCreateError, RoomSendResponse

from tests.support import RunningStack, eventually, wait_for_event


async def test_bot_joins_a_dm_and_answers_ping(stack: RunningStack):
    nurse = await stack.login("n3002")
    try:
        dm = await nurse.room_create(is_direct=True, invite=[stack.bot_user_id])
        assert not isinstance(dm, RoomCreateError), dm

        async def bot_joined() -> bool:
            members = await nurse.joined_members(dm.room_id)
            return stack.bot_user_id in {m.user_id for m in members.members}

        await eventually(bot_joined)
        sent = await nurse.room_send(dm.room_id, "m.room.message", {"msgtype": "m.text", "body": "!ping"})
        assert isinstance(sent, RoomSendResponse), sent
        reply = await wait_for_event(
            nurse, dm.room_id, lambda e: e["sender"] == stack.bot_user_id and e["type"] == "m.room.message"
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
