"""The voice queue kept in the appservice database, on SQLite and PostgreSQL: what the
service does at start with voice messages accepted before a crash.

A message whose recognition took the appservice down three times (each counted before it
started) is not tried a fourth time at the next start: the sender gets the ``gave_up``
notice and the message is answered. The homeserver and the audit trail are stand-ins that
keep what they are sent; the database is real."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appservice.config import VoiceConfig
from appservice.voice.service import MAX_ATTEMPTS, VoiceService
from appservice.voice.store import VoiceStore
from carematrix.policy.holder import PolicyHolder
from tests.integration.test_schema_upgrade import Backend, opened
from tests.paths import DEMO_POLICY_DIR

CONTENT = {"msgtype": "m.audio", "body": "Voice message", "url": "mxc://h/abc",
           "info": {"mimetype": "audio/ogg", "duration": 6000, "size": 30000}, "org.matrix.msc3245.voice": {}}


class Homeserver:
    server = "h"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.downloads: list[str] = []

    def uid(self, localpart: str) -> str:
        return f"@{localpart}:h"

    async def call(self, method: str, path: str, body: Any = None, as_user: str | None = None) -> Any:
        self.sent.append(body)
        return {"event_id": f"$answer{len(self.sent)}"}

    async def download(self, mxc: str) -> bytes:
        self.downloads.append(mxc)
        return b"OggS"


class Audit:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def record(self, **fields: Any) -> bool:
        self.records.append(fields)
        return True


class OncallStore:
    async def role_rooms(self, room_id: str) -> list[tuple[str, bool]]:
        return []

    async def open_pages_in(self, room_id: str) -> list[Any]:
        return []


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path)
    yield b
    b.drop_all()


async def test_a_message_that_took_the_appservice_down_three_times_is_given_up_at_the_next_start(backend, tmp_path):
    target = backend.new()
    async with opened(backend, target) as (db, _):
        store = VoiceStore(db)
        await store.accept([("$v", "!r:h", "@n3002:h", CONTENT)])
        for _ in range(MAX_ATTEMPTS):  # three starts, each killed while recognising it
            await store.started("$v")
    async with opened(backend, target) as (db, _):
        homeserver, audit = Homeserver(), Audit()
        service = VoiceService(
            VoiceConfig(), PolicyHolder(DEMO_POLICY_DIR), homeserver, "@carematrix:h",  # type: ignore[arg-type]
            audit, OncallStore(), tmp_path, VoiceStore(db),  # type: ignore[arg-type]
        )
        consumer = asyncio.create_task(service._consume())
        try:
            await service._resume()
            async with asyncio.timeout(10):
                while not homeserver.sent:
                    await asyncio.sleep(0.05)
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        (notice,) = homeserver.sent
        assert notice["org.carematrix.voice_problem"] == "gave_up"
        assert notice["m.relates_to"]["m.in_reply_to"]["event_id"] == "$v"
        assert notice["body"].index("无法转写") < notice["body"].index("Not transcribed") and "3" in notice["body"]
        assert [(r["action"], r["object"], r["details"]["problem"]) for r in audit.records] == [
            ("appservice.voice.not_transcribed", "$v", "gave_up"),
        ]
        assert homeserver.downloads == []  # not fetched, let alone recognised, a fourth time
        answered = await VoiceStore(db).get("$v")
        assert answered is not None and answered.done
        assert await VoiceStore(db).pending() == []
