"""The device call API: nurse-call buttons, smart badges and bedside terminals page the ward's
on-duty staff over HTTP on the appservice's port, and poll whether and by whom their call was
acknowledged.

``POST /_carematrix/devices/<id>/call`` with ``{"kind": "assist" | "emergency" | "code"}`` and
``Authorization: Bearer <device token>``: the call is said in the unit's team room (the
device's location, what was pressed) and the roles the policy names for that kind are paged
there, through the same paging as a message to a role (escalation, acknowledgement, quiet
hours breakthrough). Presses within the policy's window are one call (carematrix.devices).
``GET /_carematrix/devices/<id>/call`` (the latest call) or ``.../calls/<call id>``: its state.
Every press, and every refused one, is audited. Unknown device: 404; wrong token: 401.

A press that finds nobody on duty for a role (a roster gap) pages the role's fallback: the
answer and the poll say so for that page (``roster_gap``, ``fallback_paged`` and a notice
the device shows, Chinese first), and so does the press's audit record (``roster_gaps``,
rule ``oncall.fallback``) — a bed whose nurse was never rostered is not reported as simply
"paged".
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web
from mautrix.util.async_db import Database

from appservice.homeserver import HomeserverUnreachable, MatrixCallFailed
from appservice.oncall.service import OncallService
from appservice.timing import step
from carematrix.devices import LastCall, call_text, gap_text, is_repeat, token_matches
from carematrix.oncall.escalation import RosterGap, roster_gaps
from carematrix.policy.devices import CALL_KINDS, Device, DevicePolicy
from carematrix.policy.holder import PolicyHolder
from carematrix.rules.protection import PRIORITY_FIELD

log = logging.getLogger("carematrix.appservice.devices")

BASE = "/_carematrix/devices"
DEVICE_FIELD = "org.carematrix.device_call"  # on the call's notice: device, kind, call ID


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class DeviceStore:
    """Calls and the pages each opened (tables made by appservice.migrations, upgrade 3)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def latest(self, device_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow(
            "SELECT * FROM device_call WHERE device_id = $1 ORDER BY made_at DESC LIMIT 1", device_id
        )
        return dict(row) if row else None

    async def call(self, device_id: str, call_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow(
            "SELECT * FROM device_call WHERE device_id = $1 AND call_id = $2", device_id, call_id
        )
        return dict(row) if row else None

    async def add(self, call_id: str, device_id: str, kind: str, now: datetime) -> None:
        await self.db.execute(
            "INSERT INTO device_call (call_id, device_id, kind, first_press, last_press, presses, made_at) "
            "VALUES ($1, $2, $3, $4, $4, 1, $5)",
            call_id, device_id, kind, _ms(now), int(time.time() * 1000),
        )

    async def pressed_again(self, call_id: str, now: datetime) -> None:
        await self.db.execute(
            "UPDATE device_call SET last_press = $2, presses = presses + 1 WHERE call_id = $1", call_id, _ms(now)
        )

    async def set_notice(self, call_id: str, room_id: str, event_id: str) -> None:
        await self.db.execute(
            "UPDATE device_call SET room_id = $2, event_id = $3 WHERE call_id = $1", call_id, room_id, event_id
        )

    async def add_page(self, call_id: str, page_id: str, role: str) -> None:
        await self.db.execute(
            "INSERT INTO device_call_page (call_id, page_id, role) VALUES ($1, $2, $3) "
            "ON CONFLICT (call_id, page_id) DO NOTHING",
            call_id, page_id, role,
        )

    async def pages(self, call_id: str) -> list[tuple[str, str]]:
        rows = await self.db.fetch(
            "SELECT page_id, role FROM device_call_page WHERE call_id = $1 ORDER BY role", call_id
        )
        return [(r["page_id"], r["role"]) for r in rows]


class DeviceService:
    def __init__(
        self, store: DeviceStore, holder: PolicyHolder, oncall: OncallService, generated_hashes: dict[str, str],
    ) -> None:
        self.store = store
        self.holder = holder
        self.oncall = oncall
        self.generated_hashes = generated_hashes
        self._rooms: dict[str, str] = {}
        # One press decided at a time: two presses arriving together are still one call.
        self._lock = asyncio.Lock()
        # New calls whose pages are still going out: a press meanwhile repeats them (they
        # have no page yet, which would otherwise read as a call that failed to page).
        self._paging: set[str] = set()

    def routes(self, app: web.Application) -> None:
        app.router.add_post(BASE + "/{device_id}/call", self.press)
        app.router.add_get(BASE + "/{device_id}/call", self.latest)
        app.router.add_get(BASE + "/{device_id}/calls/{call_id}", self.state)

    @property
    def policy(self) -> DevicePolicy | None:
        return self.holder.current.devices

    async def _device(self, request: web.Request) -> Device | web.Response:
        """The device the request is for, if its token is right; else the refusal."""
        device_id = request.match_info["device_id"]
        policy = self.policy
        device = policy.devices.get(device_id) if policy else None
        if device is None:
            return _error(404, "M_NOT_FOUND", f"no device '{device_id}' in the policy (devices section)")
        given = request.headers.get("Authorization", "")
        token = given[len("Bearer "):] if given.startswith("Bearer ") else ""
        expected = device.token_sha256 or self.generated_hashes.get(device.id)
        if not token_matches(token, expected):
            log.warning("device %s: call refused, wrong or missing token (from %s)", device.id, request.remote)
            await self.oncall.ctx.audit.record(
                actor=f"device:{device.id}", action="appservice.device.call", object=device.id, outcome="failure",
                process="appservice", details={"reason": "bad token", "remote": request.remote or ""},
            )
            return _error(401, "M_UNKNOWN_TOKEN", "wrong or missing device token")
        return device

    async def press(self, request: web.Request) -> web.Response:
        found = await self._device(request)
        if isinstance(found, web.Response):
            return found
        device = found
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            body = None
        kind = body.get("kind") if isinstance(body, dict) else None
        if kind not in CALL_KINDS:
            return _error(400, "M_INVALID_PARAM", f"'kind' must be one of: {', '.join(CALL_KINDS)}")
        policy = self.policy
        assert policy is not None
        now = self.oncall.clock.now()  # the on-call clock, which drills move
        async with self._lock:
            last = await self.store.latest(device.id)
            last_call = None
            if last is not None:
                opened, acked = await self._progress(last["call_id"])
                closed = acked or (not opened and last["call_id"] not in self._paging)
                last_call = LastCall(last["call_id"], last["kind"], _dt(last["last_press"]), closed)
            if last_call is not None and is_repeat(last_call, kind, now, policy.repeat_window_seconds):
                await self.store.pressed_again(last_call.call_id, now)
                call_id, repeat = last_call.call_id, True
            else:
                call_id, repeat = uuid.uuid4().hex[:16], False
                await self.store.add(call_id, device.id, kind, now)
                self._paging.add(call_id)
        roles = policy.roles_for(device, kind)
        failed: Exception | None = None
        if not repeat:
            try:
                await self._page(device, kind, call_id, roles)
            except (MatrixCallFailed, HomeserverUnreachable) as exc:
                log.error("device %s: call %s could not be paged: %s", device.id, call_id, exc)
                failed = exc
            finally:
                self._paging.discard(call_id)
        # Who the fallback paged where nobody was on duty (a new call's pages only).
        met: list[tuple[str, RosterGap]] = [] if repeat else [
            (role, gap) for page_id, role in await self.store.pages(call_id) for gap in await self._gaps(page_id)
        ]
        # Audit details are scalars or lists of them: one line per gap, and the fields to search by.
        said = [
            f"{role} step {gap.step + 1}: fallback {self._fallback(role) or '(none)'} paged "
            f"{', '.join(gap.fallback_paged) or 'nobody'}"
            for role, gap in met
        ]
        gaps: dict[str, list[str]] = {
            "roster_gaps": said,
            "roster_gap_roles": list(dict.fromkeys(role for role, _ in met)),
            "fallback_paged": list(dict.fromkeys(s for _, gap in met for s in gap.fallback_paged)),
        } if met else {}
        if met:  # the outbox has said WARNING "roster gap" already; this says who answered it
            log.info("device %s: call %s found a roster gap: %s", device.id, call_id, "; ".join(said))
        # Recorded after the page is out: the record is one more round trip to the homeserver.
        await self.oncall.ctx.audit.record(
            actor=f"device:{device.id}", action="appservice.device.call", object=device.id,
            outcome="failure" if failed else "success", process="appservice",
            details={"call": call_id, "kind": kind, "repeat": repeat, "unit": device.unit, "bed": device.bed or "",
                     "roles": list(roles), **({"error": str(failed)} if failed else {}),
                     **gaps},
            **({"rule": "oncall.fallback"} if gaps else {}),
        )
        if failed is not None:
            return _error(503, "M_UNAVAILABLE", "the call was recorded but could not be paged yet; press again")
        return web.json_response(await self._describe(device, call_id), status=200 if repeat else 201)

    async def _page(self, device: Device, kind: str, call_id: str, roles: tuple[str, ...]) -> None:
        """The roles are paged first — each page notice says what and where, and is what the
        nurse's phone rings for — then the call is said once in the room for the record (and
        for a device that polls, its room and event)."""
        policy = self.policy
        assert policy is not None
        call = policy.calls[kind]
        ctx = self.oncall.ctx
        with step("device call: unit room"):
            room_id = await self._unit_room(device.unit)
        text = call_text(device, kind)
        for role in roles:
            page_id = f"device-{call_id}-{role}"
            await self.store.add_page(call_id, page_id, role)
            with step(f"device call: page {role}"):
                await self.oncall.page_for_system(
                    page_id, role, room_id, "", ctx.bot, priority=call.priority, subject=text,
                )
        with step("device call: notice"):
            sent = await ctx.matrix.call(
                "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/device-{call_id}",
                {"msgtype": "m.notice", "body": text, PRIORITY_FIELD: call.priority,
                 DEVICE_FIELD: {"device": device.id, "kind": kind, "call": call_id}},
            )
        event_id = str(sent.get("event_id", "")) if isinstance(sent, dict) else ""
        await self.store.set_notice(call_id, room_id, event_id)

    async def _unit_room(self, unit: str) -> str:
        """The unit's team room, where its staff already are (the clinical ward room)."""
        clinical = self.holder.current.clinical
        localpart = (clinical.ward_room if clinical else "{unit}-team").format(unit=unit)
        alias = f"#{localpart}:{self.oncall.ctx.matrix.server}"
        if alias not in self._rooms:
            data = await self.oncall.ctx.matrix.call("GET", f"/_matrix/client/v3/directory/room/{quote(alias)}")
            self._rooms[alias] = str(data["room_id"])
        return self._rooms[alias]

    async def _gaps(self, page_id: str) -> list[RosterGap]:
        return roster_gaps(await self.oncall.store.actions(page_id))

    def _fallback(self, role_id: str) -> str:
        """The role's fallback as the policy names it ("pool:icu-senior"), or "" if it has none."""
        oncall = self.holder.current.oncall
        role = oncall.roles.get(role_id) if oncall else None
        return (role.escalation.fallback or "") if role is not None else ""

    async def _progress(self, call_id: str) -> tuple[bool, bool]:
        """Whether the call opened any page (it did not if the homeserver was down: the next
        press pages afresh), and whether any of its pages was acknowledged."""
        opened = acked = False
        for page_id, _ in await self.store.pages(call_id):
            page = await self.oncall.store.page(page_id)
            if page is not None:
                opened = True
                acked = acked or page.state == "acked"
        return opened, acked

    async def latest(self, request: web.Request) -> web.Response:
        found = await self._device(request)
        if isinstance(found, web.Response):
            return found
        last = await self.store.latest(found.id)
        if last is None:
            return _error(404, "M_NOT_FOUND", "this device has made no call")
        return web.json_response(await self._describe(found, last["call_id"]))

    async def state(self, request: web.Request) -> web.Response:
        found = await self._device(request)
        if isinstance(found, web.Response):
            return found
        call_id = request.match_info["call_id"]
        if await self.store.call(found.id, call_id) is None:
            return _error(404, "M_NOT_FOUND", f"no call '{call_id}' from this device")
        return web.json_response(await self._describe(found, call_id))

    async def _describe(self, device: Device, call_id: str) -> dict[str, Any]:
        """Where a call stands, for the device's display: acknowledged (by whom, when) as soon
        as any page it opened is."""
        row = await self.store.call(device.id, call_id)
        assert row is not None
        oncall = self.oncall
        zone = oncall.local_now().tzinfo
        pages = []
        notices = []
        acked: list[tuple[datetime, str]] = []
        for page_id, role in await self.store.pages(call_id):
            page = await oncall.store.page(page_id)
            if page is None:
                continue
            by = oncall.name(page.acked_by) if page.acked_by else None
            if page.state == "acked" and page.acked_at is not None and by:
                acked.append((page.acked_at, by))
            gaps = await self._gaps(page_id)
            fallback = [oncall.name(s) for s in dict.fromkeys(s for g in gaps for s in g.fallback_paged)]
            pages.append({
                "role": role, "alert_id": page.alert_id, "state": page.state, "priority": page.priority,
                "paged": [oncall.name(s) for s in page.paged], "acknowledged_by": by,
                "roster_gap": bool(gaps),
                **({"fallback": self._fallback(role) or None, "fallback_paged": fallback} if gaps else {}),
            })
            if gaps:
                notices.append(gap_text(page.role_name or role, fallback))
        first = min(acked) if acked else None
        return {
            "call_id": call_id, "device": device.id, "kind": row["kind"], "location": device.label,
            "presses": row["presses"],
            "pressed_at": _dt(row["first_press"]).astimezone(zone).isoformat(),
            "acknowledged": first is not None,
            "acknowledged_by": first[1] if first else None,
            "acknowledged_at": first[0].astimezone(zone).isoformat() if first else None,
            "roster_gap": bool(notices),
            "notices": notices,
            "pages": pages,
        }


def _error(status: int, errcode: str, text: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": text}, status=status)
