"""The appservice's records go to the audit trail through the homeserver, so that every
record lands in one chain in one database (docs/audit.md)."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

log = logging.getLogger("carematrix.appservice.audit")

RECORDS_PATH = "/_synapse/client/carematrix/audit/records"


class AuditClient:
    def __init__(self, homeserver_url: str, as_token: str) -> None:
        self.url = homeserver_url.rstrip("/") + RECORDS_PATH
        self.as_token = as_token

    async def record(self, **fields: Any) -> bool:
        """Returns False (and logs) if the homeserver did not take the record."""
        try:
            async with aiohttp.ClientSession() as session, session.post(
                self.url, json={"records": [fields]}, headers={"Authorization": f"Bearer {self.as_token}"}
            ) as resp:
                if resp.status == 200:
                    return True
                log.error("audit record %s refused: HTTP %d %s", fields.get("action"), resp.status, await resp.text())
        except aiohttp.ClientError as exc:
            log.error("audit record %s not delivered: %s", fields.get("action"), exc)
        return False
