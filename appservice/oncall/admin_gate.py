"""Whether the service may use Synapse's admin API yet. On a fresh deployment ``carematrix up``
makes the bot server admin only after the appservice is up, so until then the upkeep that needs
it (role names, quiet hours) waits instead of failing."""

from __future__ import annotations

import logging
import time
from urllib.parse import quote

from appservice.homeserver import Homeserver, MatrixCallFailed

log = logging.getLogger("carematrix.appservice.oncall")

ADMIN_WAIT_WARN_SECONDS = 300.0


class AdminGate:
    def __init__(self, matrix: Homeserver, bot_user_id: str) -> None:
        self.matrix = matrix
        self.bot = bot_user_id
        self._is_admin = False
        self._waiting_since: float | None = None
        self._warned = False

    async def server_admin(self) -> bool:
        """True once the bot is server admin (then never asked again). Waiting long is a
        deployment problem and is said once at WARNING."""
        if self._is_admin:
            return True
        try:
            await self.matrix.call("GET", f"/_synapse/admin/v2/users/{quote(self.bot)}")
        except MatrixCallFailed as exc:
            if exc.status != 403:
                raise
            now = time.monotonic()
            if self._waiting_since is None:
                self._waiting_since = now
                log.info("role names and quiet hours wait until %s is server admin", self.bot)
            elif not self._warned and now - self._waiting_since > ADMIN_WAIT_WARN_SECONDS:
                self._warned = True
                log.warning(
                    "%s is still not server admin after %.0f s: role names and quiet hours are not applied "
                    "(carematrix up makes it one; or set admin in Synapse's admin API)",
                    self.bot, now - self._waiting_since,
                )
            return False
        self._is_admin = True
        if self._waiting_since is not None:
            log.info("%s is server admin: applying role names and quiet hours", self.bot)
        return True
