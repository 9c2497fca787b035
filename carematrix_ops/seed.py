"""Bring a freshly started homeserver to the state the org policy describes.

Idempotent: run at every ``carematrix up``. Creates the admin account used by tooling,
makes the bot a server admin, and asks the appservice for an org sync (accounts, spaces,
standard rooms, memberships); existing accounts keep their passwords and sessions. With the
demo systems it also puts the demo patient's CT into the demo PACS, so ``!images`` has
something to find.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from urllib.parse import quote

from carematrix import identity
from carematrix_ops.deploy.settings import ADMIN_LOCALPART, Deployment
from carematrix_ops.http import HttpError, request_json

log = logging.getLogger(__name__)

ANNOUNCEMENT_ALIAS = "announcements"


def shared_secret_registration(secret: str, nonce: str, localpart: str, password: str, admin: bool) -> dict:
    """Body for Synapse's shared-secret registration API (HMAC-SHA1 over the NUL-joined fields)."""
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join(p.encode() for p in (nonce, localpart, password, "admin" if admin else "notadmin")))
    return {"nonce": nonce, "username": localpart, "password": password, "admin": admin, "mac": mac.hexdigest()}


@dataclass
class SeedResult:
    created_users: list[str]
    announcement_room_id: str


class Seeder:
    def __init__(self, deployment: Deployment) -> None:
        self.d = deployment
        self.base = deployment.settings.homeserver_url
        self.server = deployment.settings.server_name
        self._admin_token: str | None = None

    def user_id(self, localpart: str) -> str:
        return identity.user_id(localpart, self.server)

    def register_with_shared_secret(self, localpart: str, password: str, admin: bool) -> bool:
        """Returns False if the account already exists."""
        url = f"{self.base}/_synapse/admin/v1/register"
        nonce = request_json("GET", url)["nonce"]
        body = shared_secret_registration(self.d.secrets["registration_shared_secret"], nonce, localpart, password, admin)
        try:
            request_json("POST", url, body)
        except HttpError as exc:
            if exc.errcode == "M_USER_IN_USE":
                return False
            raise
        return True

    def admin_token(self) -> str:
        if self._admin_token is None:
            password = self.d.secrets["admin_password"]
            self.register_with_shared_secret(ADMIN_LOCALPART, password, admin=True)
            resp = request_json(
                "POST",
                f"{self.base}/_matrix/client/v3/login",
                {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": ADMIN_LOCALPART},
                    "password": password,
                    "device_id": "CAREMATRIX_CLI",
                    "initial_device_display_name": "carematrix command line",
                },
            )
            self._admin_token = resp["access_token"]
        return self._admin_token

    def promote_bot(self) -> None:
        """Org sync runs as the bot and needs the admin API (accounts, forced joins)."""
        request_json(
            "PUT",
            f"{self.base}/_synapse/admin/v2/users/{quote(self.d.bot_user_id)}",
            {"admin": True, "displayname": "CareMatrix"},
            token=self.admin_token(),
        )

    def org_sync(self, dry_run: bool = False) -> dict:
        return request_json(
            "POST",
            f"{self.d.settings.appservice_url}/_carematrix/org/sync",
            {"dry_run": dry_run},
            token=self.d.secrets["as_token"],
            timeout=3600,
        )

    def room_for_alias(self, alias_localpart: str) -> str:
        alias = f"#{alias_localpart}:{self.server}"
        return request_json(
            "GET", f"{self.base}/_matrix/client/v3/directory/room/{quote(alias)}", token=self.d.secrets["as_token"]
        )["room_id"]

    def wait_for_background_updates(self, timeout: float = 600.0) -> None:
        """A fresh database gets some indexes from background updates; until they finish,
        a few admin operations (e.g. reactivating an account on PostgreSQL) fail."""
        url = f"{self.base}/_synapse/admin/v1/background_updates/status"
        deadline = time.monotonic() + timeout
        idle_polls = 0
        while idle_polls < 3:
            if time.monotonic() > deadline:
                raise SeedFailed(f"database background updates still running after {timeout:.0f}s")
            status = request_json("GET", url, token=self.admin_token())
            idle_polls = idle_polls + 1 if not status.get("current_updates") else 0
            time.sleep(0.3)

    def load_demo_images(self) -> None:
        """Orthanc keeps its store under the data dir, so after the first run this only finds
        the study already there."""
        from carematrix_ops.demo.pacs import OrthancClient, load_demo_study

        orthanc = OrthancClient(self.d.settings.demo_pacs_url, self.d.paths.demo_pacs_log)
        try:
            load_demo_study(orthanc)
        except (RuntimeError, OSError) as exc:
            raise SeedFailed(f"loading the demo CT into the demo PACS ({orthanc.url}) failed: {exc}") from exc

    def run(self) -> SeedResult:
        if self.d.settings.has_demo_pacs:
            self.load_demo_images()
        self.wait_for_background_updates()
        self.promote_bot()
        report = self.org_sync()
        if report["errors"]:
            errors = report["errors"]
            shown = "\n".join(errors[:10]) + (f"\n... and {len(errors) - 10} more" if len(errors) > 10 else "")
            raise SeedFailed(f"org sync reported {len(errors)} error(s):\n{shown}")
        created = [a for a in report["actions"] if a.startswith("+ account")]
        return SeedResult(created, self.room_for_alias(ANNOUNCEMENT_ALIAS))


class SeedFailed(Exception):
    pass
