"""The appservice's records go to the audit trail through the homeserver, so that every
record lands in one chain in one database (docs/audit.md)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

log = logging.getLogger("carematrix.appservice.audit")

RECORDS_PATH = "/_synapse/client/carematrix/audit/records"
ATTEMPTS = 3
TIMEOUT = aiohttp.ClientTimeout(total=20)


class AuditClient:
    def __init__(self, homeserver_url: str, as_token: str) -> None:
        self.url = homeserver_url.rstrip("/") + RECORDS_PATH
        self.as_token = as_token

    async def record(self, **fields: Any) -> bool:
        """Returns False (and logs) if the homeserver did not take the record. A homeserver
        that is restarting or does not answer is tried again a few times, each try bounded,
        so a stalled request never holds up the paging or hand-over that is recording."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.post(
                    self.url, json={"records": [fields]}, headers={"Authorization": f"Bearer {self.as_token}"}
                ) as resp:
                    if resp.status == 200:
                        return True
                    body = await resp.text()
                    if resp.status < 500:
                        log.error("audit record %s refused: HTTP %d %s", fields.get("action"), resp.status, body)
                        return False
                    problem = f"HTTP {resp.status} {body[:200]}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < ATTEMPTS:
                log.warning("audit record %s not delivered (%s); trying again", fields.get("action"), problem)
                await asyncio.sleep(attempt)
        log.error("audit record %s not delivered after %d tries: %s", fields.get("action"), ATTEMPTS, problem)
        return False
