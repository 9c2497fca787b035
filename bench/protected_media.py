"""Downloading a 12-megapixel photo: Synapse serving it from an ordinary room (the baseline)
against the media gate serving it from a watermark room, on one CareMatrix stack in one run.

The gate renders once per (media, viewer, minute) and then answers from its cache, so the
repeat downloads show the steady cost; the first download of each viewer shows the render.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp

from bench.roundtrip import _call, _login
from bench.stats import comparison, summary
from bench.watermark import photo_jpeg
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.settings import Settings
from carematrix_ops.seed import Seeder
from carematrix_ops.supervisor import Stack
from tests.ports import free_port_pair


async def _upload(session: aiohttp.ClientSession, base: str, token: str, data: bytes) -> str:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}
    async with session.post(f"{base}/_matrix/media/v3/upload?filename=photo.jpg", data=data, headers=headers) as resp:
        resp.raise_for_status()
        return (await resp.json())["content_uri"]


async def _post_image(session: aiohttp.ClientSession, base: str, token: str, room: str, uri: str) -> None:
    await _call(
        session, "POST", f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message", token,
        {"msgtype": "m.image", "body": "photo.jpg", "url": uri},
    )


async def _download_ms(session: aiohttp.ClientSession, base: str, token: str, uri: str) -> float:
    start = time.perf_counter()
    async with session.get(
        f"{base}/_matrix/client/v1/media/download/{uri[6:]}", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        resp.raise_for_status()
        await resp.read()
    return (time.perf_counter() - start) * 1000


async def measure(work: Path, repeats: int = 30) -> dict:
    d = prepare(Settings(data_dir=work / "carematrix", port=free_port_pair(), relaxed_rate_limits=True, hl7_port=0, turn_port=0))
    stack = Stack(d)
    stack.start()
    try:
        Seeder(d).run()
        base, password = d.settings.homeserver_url, d.secrets["demo_password"]
        async with aiohttp.ClientSession() as session:
            nurse = await _login(session, base, "n3001", password)
            doctor = await _login(session, base, "d2001", password)
            icu = (await _call(session, "GET", f"{base}/_matrix/client/v3/directory/room/%23icu-team:{d.settings.server_name}", nurse))["room_id"]
            plain_room = (await _call(
                session, "POST", f"{base}/_matrix/client/v3/createRoom", nurse,
                {"preset": "private_chat", "invite": [f"@d2001:{d.settings.server_name}"]},
            ))["room_id"]
            await _call(session, "POST", f"{base}/_matrix/client/v3/join/{plain_room}", doctor, {})
            plain_uri = await _upload(session, base, nurse, photo_jpeg(seed=1))
            marked_uri = await _upload(session, base, nurse, photo_jpeg(seed=2))
            await _post_image(session, base, nurse, plain_room, plain_uri)
            await _post_image(session, base, nurse, icu, marked_uri)
            first = [await _download_ms(session, base, t, marked_uri) for t in (nurse, doctor)]
            plain = [await _download_ms(session, base, doctor, plain_uri) for _ in range(repeats)]
            repeat = [await _download_ms(session, base, doctor, marked_uri) for _ in range(repeats)]
        result = comparison(
            "12 MP JPEG download: Synapse (ordinary room) vs watermark room, repeat within the minute",
            summary(plain), summary(repeat),
        )
        result["first_render_ms"] = [round(x, 1) for x in first]
        return result
    finally:
        stack.stop()
