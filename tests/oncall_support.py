"""Helpers for tests that drive on-duty paging: the appservice's movable clock, and what a
client sees of pages and notices in a room."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from nio import AsyncClient

from tests.support import RunningStack

HOSPITAL_TZ = ZoneInfo("Asia/Shanghai")


def tomorrow_at(hour: int, minute: int) -> datetime:
    day = datetime.now(HOSPITAL_TZ).date() + timedelta(days=1)
    return datetime.combine(day, time(hour, minute), HOSPITAL_TZ)


async def set_clock(stack: RunningStack, at: datetime) -> None:
    url = stack.deployment.settings.appservice_url + "/_carematrix/test/clock"
    headers = {"Authorization": f"Bearer {stack.deployment.secrets['as_token']}"}
    async with aiohttp.ClientSession() as http, http.post(url, json={"now": at.isoformat()}, headers=headers) as resp:
        assert resp.status == 200, await resp.text()


async def holds(stack: RunningStack, **settings: bool) -> dict[str, Any]:
    """Set (or, without settings, read) the appservice's test holds (appservice.holds)."""
    url = stack.deployment.settings.appservice_url + "/_carematrix/test/holds"
    headers = {"Authorization": f"Bearer {stack.deployment.secrets['as_token']}"}
    async with aiohttp.ClientSession() as http, (
        http.post(url, json=settings, headers=headers) if settings else http.get(url, headers=headers)
    ) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def held(stack: RunningStack, gate: str, event_id: str) -> bool:
    """Whether ``event_id`` waits at one of the holds' gates."""
    return event_id in ((await holds(stack)).get(gate) or [])


async def members(client: AsyncClient, room: str) -> dict[str, str]:
    state = await client.room_get_state(room)
    return {e["state_key"]: e["content"].get("membership") for e in state.events if e["type"] == "m.room.member"}


async def notices(client: AsyncClient, room: str) -> list[dict[str, Any]]:
    resp = await client.room_messages(room, limit=100)
    assert hasattr(resp, "chunk"), resp
    return [e.source for e in reversed(resp.chunk) if e.source.get("content", {}).get("msgtype") == "m.notice"]


async def paged_in(client: AsyncClient, room: str) -> set[str]:
    out: set[str] = set()
    for n in await notices(client, room):
        if n["content"].get("org.carematrix.page"):
            out |= set(n["content"].get("m.mentions", {}).get("user_ids", []))
    return out


async def quiet_rule_in_place(stack: RunningStack, client: AsyncClient) -> bool:
    """The off-duty push rule is set for this user, below the critical-alert rule."""
    async with aiohttp.ClientSession() as http, http.get(
        stack.url + "/_matrix/client/v3/pushrules/global/",
        headers={"Authorization": f"Bearer {client.access_token}"},
    ) as resp:
        ids = [r["rule_id"] for r in (await resp.json())["override"]]
    return "org.carematrix.quiet_hours" in ids and ids.index("org.carematrix.critical") < ids.index(
        "org.carematrix.quiet_hours"
    )
