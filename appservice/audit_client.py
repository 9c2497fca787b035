"""The appservice's records go to the audit trail through the homeserver, so that every
record lands in one chain in one database (docs/audit.md)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from appservice.homeserver import Homeserver, HomeserverUnreachable, MatrixCallFailed

log = logging.getLogger("carematrix.appservice.audit")

RECORDS_PATH = "/_synapse/client/carematrix/audit/records"
ATTEMPTS = 3
TIMEOUT_SECONDS = 20.0


class AuditClient:
    def __init__(self, homeserver: Homeserver) -> None:
        self.homeserver = homeserver

    async def record(self, **fields: Any) -> bool:
        """Returns False (and logs) if the homeserver did not take the record. A homeserver
        that is restarting or does not answer is tried again a few times, each try bounded,
        so a stalled request never holds up the paging or hand-over that is recording. (Our
        own retries: mautrix's would wait 4, 8, 16 s and not bound a try.)"""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with asyncio.timeout(TIMEOUT_SECONDS):
                    await self.homeserver.call("POST", RECORDS_PATH, {"records": [fields]})
                return True
            except MatrixCallFailed as exc:
                if not exc.transient:
                    log.error("audit record %s refused: %s", fields.get("action"), exc)
                    return False
                problem = str(exc)
            except HomeserverUnreachable as exc:
                problem = str(exc)
            except TimeoutError:
                problem = f"no answer within {TIMEOUT_SECONDS:g} s"
            if attempt < ATTEMPTS:
                log.warning("audit record %s not delivered (%s); trying again", fields.get("action"), problem)
                await asyncio.sleep(attempt)
        log.error("audit record %s not delivered after %d tries: %s", fields.get("action"), ATTEMPTS, problem)
        return False
