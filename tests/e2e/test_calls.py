"""One-tap calls end to end: the TURN server `carematrix up` runs (coturn) relays for the
credentials the homeserver hands a signed-in client, and refuses others; `!call` opens a
two-person direct chat with whoever holds a role now and pages them."""

from __future__ import annotations

import re
import time

import aiohttp
import pytest
from nio import AsyncClient, JoinResponse

from carematrix.stun import StunClient, TurnRefused, rest_credentials
from carematrix_ops.deploy import turn
from tests.e2e.test_oncall import bot_dm, command
from tests.oncall_support import notices, set_clock, tomorrow_at
from tests.support import RunningStack, eventually, search

needs_coturn = pytest.mark.skipif(not turn.installed(), reason=f"coturn is not installed ({turn.INSTALL_HINT})")


async def turn_credentials(stack: RunningStack, localpart: str) -> dict:
    """What Element asks for before a call."""
    client = await stack.login(localpart)
    try:
        async with aiohttp.ClientSession() as http, http.get(
            stack.url + "/_matrix/client/v3/voip/turnServer",
            headers={"Authorization": f"Bearer {client.access_token}"},
        ) as r:
            assert r.status == 200, await r.text()
            return await r.json()
    finally:
        await client.close()


def relay_address(uri: str) -> tuple[str, int]:
    host_port = uri.split(":", 1)[1].split("?")[0]
    host, port = host_port.rsplit(":", 1)
    return host.strip("[]"), int(port)


@needs_coturn
async def test_turn_credentials_from_the_homeserver_allocate_a_relay(stack: RunningStack):
    creds = await turn_credentials(stack, "n3002")
    assert creds["uris"] == turn.turn_uris(stack.deployment.settings)
    assert any(u.endswith("?transport=udp") for u in creds["uris"])
    assert creds["username"].endswith(":" + stack.user_id("n3002"))
    assert creds["ttl"] > 0
    host, port = relay_address(creds["uris"][0])
    with StunClient(host, port) as client:
        relayed_host, relayed_port = client.allocate(creds["username"], creds["password"])
    settings = stack.deployment.settings
    assert settings.turn_min_port <= relayed_port <= settings.turn_max_port
    assert relayed_host == host


@needs_coturn
async def test_turn_refuses_credentials_made_with_another_secret(stack: RunningStack):
    creds = await turn_credentials(stack, "n3002")
    host, port = relay_address(creds["uris"][0])
    forged = rest_credentials("not-the-deployment-secret", creds["username"])
    with StunClient(host, port) as client, pytest.raises(TurnRefused) as refused:
        client.allocate(creds["username"], forged)
    assert refused.value.code == 401
    # An expired username is refused too, even with the right secret.
    expired = f"{int(time.time()) - 60}:{stack.user_id('n3002')}"
    with StunClient(host, port) as client, pytest.raises(TurnRefused):
        client.allocate(expired, rest_credentials(stack.deployment.secrets["turn_shared_secret"], expired))


async def join_invites(client: AsyncClient) -> None:
    synced = await client.sync(timeout=0, full_state=True)
    for room_id in list(synced.rooms.invite):
        await client.join(room_id)


async def members(client: AsyncClient, room: str) -> dict[str, str]:
    state = await client.room_get_state(room)
    return {e["state_key"]: e["content"].get("membership") for e in state.events if e["type"] == "m.room.member"}


async def ringing(client: AsyncClient, caller_name: str) -> dict | None:
    """The newest "is calling you" page the service sent this person, in any room they are in."""
    await join_invites(client)
    found = None
    for room_id in (await client.joined_rooms()).rooms:
        for n in await notices(client, room_id):
            if "is calling you" in n["content"]["body"] and caller_name in n["content"]["body"]:
                found = n
    return found


async def test_call_opens_a_two_person_room_with_whoever_holds_the_role_now(stack: RunningStack):
    await set_clock(stack, tomorrow_at(10, 0))  # D2001 holds ICU doctor on duty 08:00-20:00
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        chat = await bot_dm(stack, nurse)
        reply = await command(nurse, chat, "!call icu/doctor", "Calling")
        assert "D2001" in reply, reply
        room = re.search(r"matrix.to/#/(![^ ]+)", reply).group(1)
        # Invited as to a direct chat (Element files it under people and offers the call button).
        state = await nurse.room_get_state(room)
        invite = next(e for e in state.events if e["type"] == "m.room.member" and e["state_key"] == stack.user_id("d2001"))
        assert invite["content"]["membership"] == "invite" and invite["content"].get("is_direct") is True

        # The doctor is paged at urgent priority where the service reaches them, with the room.
        page = await eventually(lambda: ringing(doctor, "N3001"))
        assert page["content"]["org.carematrix.priority"] == "urgent"
        assert page["content"]["org.carematrix.page"] is True
        assert stack.user_id("d2001") in page["content"]["m.mentions"]["user_ids"]
        assert room in page["content"]["body"]

        # The shape Element's call button needs: a direct chat with the two of them alone.
        joined = await doctor.join(room)
        assert isinstance(joined, JoinResponse), joined
        assert await members(nurse, room) == {stack.user_id("n3001"): "join", stack.user_id("d2001"): "join"}
        direct = await nurse.list_direct_rooms()  # the caller's m.direct: Element files it as a DM
        assert room in direct.rooms[stack.user_id("d2001")]

        # Calling the same person again (by staff number) rings them in the same room.
        again = await command(nurse, chat, "!call D2001", "Calling")
        assert room in again, again

        records = [r for r in search(stack, "--action", "appservice.call.opened") if r.get("room") == room]
        assert len(records) >= 2 and all(r["actor"] == stack.user_id("n3001") for r in records)

        unknown = await command(nurse, chat, "!call pharmacy/nobody", "neither an on-duty role")
        assert "icu/doctor" in unknown
    finally:
        await nurse.close()
        await doctor.close()


async def test_call_in_a_roster_gap_says_it_reaches_the_fallback(stack: RunningStack):
    """The ICU roster has nobody overnight: a nurse calling the ICU doctor at 03:00 must learn
    that she reaches the fallback (the ICU senior), and the fallback that they are called as such."""
    await set_clock(stack, tomorrow_at(3, 0))
    nurse = await stack.login("n3001")
    senior = await stack.login("d2001")
    try:
        chat = await bot_dm(stack, nurse)
        reply = await command(nurse, chat, "!call icu/doctor", "Calling")
        assert "D2001" in reply and "排班空缺" in reply and "roster gap" in reply, reply
        page = await eventually(lambda: ringing(senior, "N3001"))
        assert "roster gap, as the fallback" in page["content"]["body"], page["content"]["body"]
        room = re.search(r"matrix.to/#/(![^ ]+)", reply).group(1)
        records = [r for r in search(stack, "--action", "appservice.call.opened") if r.get("room") == room]
        assert any(r["details"].get("roster_gap") is True for r in records), records
    finally:
        await nurse.close()
        await senior.close()
