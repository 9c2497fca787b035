"""Create the hospital's accounts and standard rooms on a running homeserver.

Idempotent: run at every ``carematrix up``; existing accounts keep their passwords and
sessions, display names follow the org policy, missing rooms are created.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from urllib.parse import quote

from carematrix.deploy import ADMIN_LOCALPART, Deployment
from carematrix.http import HttpError, request_json
from carematrix.policy import Policy, Staff, load_policy
from carematrix.policy.model import ROOM_CLASS_EVENT

log = logging.getLogger(__name__)

ANNOUNCEMENT_ALIAS = "announcements"


@dataclass
class SeedResult:
    created_users: list[str]
    announcement_room_id: str


def display_name(staff: Staff, policy: Policy) -> str:
    """``<name> · <unit> · <title>``: what colleagues see in every client."""
    unit = policy.units.get(staff.units[0]) if staff.units else None
    parts = [staff.name, unit.name if unit else "", staff.title]
    return " · ".join(p for p in parts if p)


class Seeder:
    def __init__(self, deployment: Deployment) -> None:
        self.d = deployment
        self.base = deployment.settings.homeserver_url
        self.server = deployment.settings.server_name
        self._admin_token: str | None = None

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server}"

    def register_with_shared_secret(self, localpart: str, password: str, admin: bool) -> bool:
        """Returns False if the account already exists."""
        url = f"{self.base}/_synapse/admin/v1/register"
        nonce = request_json("GET", url)["nonce"]
        mac = hmac.new(self.d.secrets["registration_shared_secret"].encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join(p.encode() for p in (nonce, localpart, password, "admin" if admin else "notadmin")))
        body = {"nonce": nonce, "username": localpart, "password": password, "admin": admin, "mac": mac.hexdigest()}
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

    def ensure_staff(self, policy: Policy, password: str) -> list[str]:
        token = self.admin_token()
        created = []
        for staff in policy.staff:
            uid = self.user_id(staff.localpart)
            url = f"{self.base}/_synapse/admin/v2/users/{quote(uid)}"
            name = display_name(staff, policy)
            try:
                current = request_json("GET", url, token=token)
            except HttpError as exc:
                if exc.status != 404:
                    raise
                current = None
            if current is None:
                request_json("PUT", url, {"password": password, "displayname": name}, token=token)
                created.append(uid)
            elif current.get("displayname") != name or current.get("deactivated"):
                request_json("PUT", url, {"displayname": name}, token=token)
        return created

    def ensure_announcement_room(self, policy: Policy) -> str:
        alias = f"#{ANNOUNCEMENT_ALIAS}:{self.server}"
        as_token = self.d.secrets["as_token"]
        try:
            room_id = request_json(
                "GET", f"{self.base}/_matrix/client/v3/directory/room/{quote(alias)}", token=as_token
            )["room_id"]
        except HttpError as exc:
            if exc.status != 404:
                raise
            room_id = request_json(
                "POST",
                f"{self.base}/_matrix/client/v3/createRoom",
                {
                    "room_alias_name": ANNOUNCEMENT_ALIAS,
                    "name": "全院公告 Hospital Announcements",
                    "topic": "[Announcement channel] Official notices for all staff. "
                    "Only announcers post; acknowledge with a reaction.",
                    "preset": "public_chat",
                    "visibility": "private",
                    "creation_content": {"m.federate": False},
                    "initial_state": [
                        {"type": ROOM_CLASS_EVENT, "state_key": "", "content": {"class": "announcement"}}
                    ],
                },
                token=as_token,
            )["room_id"]
        admin = self.admin_token()
        for staff in policy.staff:
            request_json(
                "POST",
                f"{self.base}/_synapse/admin/v1/join/{quote(room_id)}",
                {"user_id": self.user_id(staff.localpart)},
                token=admin,
            )
        return room_id

    def run(self) -> SeedResult:
        policy = load_policy(self.d.settings.policy_dir)
        created = self.ensure_staff(policy, self.d.secrets["demo_password"])
        room_id = self.ensure_announcement_room(policy)
        return SeedResult(created, room_id)
