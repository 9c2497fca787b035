"""What the operations console (a Synapse module, ``synapse_modules/console_module.py``)
reads from the appservice: the on-call board and the alerts, from the same roster index and
page store ``!oncall`` and ``!ack`` use, and the re-page a charge nurse asks for.

The console runs in the homeserver and signs staff in there; it calls these endpoints with
the appservice token (the homeserver already holds it, and ``/_carematrix/org/sync`` is
guarded the same way), naming the person it acts for. Nothing here trusts that person's
roles: the console decided them from the policy, and the re-page is on record under them."""

from __future__ import annotations

import hmac
import json
import logging
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from appservice.clinical.service import ClinicalService
from appservice.oncall.paging import LEAD_TIMEOUT_SECONDS, escalation_for
from appservice.oncall.service import OncallService
from carematrix.console.alerts import alert_row
from carematrix.console.board import board
from carematrix.console.fatigue import week_bounds, week_of
from carematrix.oncall.escalation import Action, hand_over
from carematrix.policy.org import staff_localpart

log = logging.getLogger("carematrix.appservice.console")

BOARD_PATH = "/_carematrix/console/board"
ALERTS_PATH = "/_carematrix/console/alerts"
REPAGE_PATH = "/_carematrix/console/repage"
HANDOVER_PATH = "/_carematrix/console/handover"
FATIGUE_PATH = "/_carematrix/console/fatigue"
RECENT_HOURS = 12  # closed pages younger than this are listed beside the open ones


class ConsoleApi:
    def __init__(self, token: str, oncall: OncallService, clinical: ClinicalService) -> None:
        self._token = token
        self.oncall = oncall
        self.clinical = clinical

    def routes(self, app: web.Application) -> None:
        app.router.add_get(BOARD_PATH, self.board)
        app.router.add_get(ALERTS_PATH, self.alerts)
        app.router.add_post(REPAGE_PATH, self.repage)
        app.router.add_post(HANDOVER_PATH, self.handover)
        app.router.add_get(FATIGUE_PATH, self.fatigue)

    def _authorised(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode())

    async def board(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"error": "unauthorised"}, status=401)
        ctx = self.oncall.ctx
        if ctx.oncall is None:
            return web.json_response({"timezone": "UTC", "now": ctx.clock.now().isoformat(), "roles": []})
        data = board(
            ctx.oncall, ctx.policy.units, ctx.roster, await ctx.store.overrides(), ctx.clock.now(), ctx.name,
        )
        data["feed_errors"] = dict(self.oncall.feed_errors)
        return web.json_response(data)

    async def alerts(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"error": "unauthorised"}, status=401)
        ctx = self.oncall.ctx
        now = ctx.clock.now()
        tz = ctx.oncall.timezone if ctx.oncall else "UTC"
        store = ctx.store
        opened = sorted(await store.pages("open"), key=lambda p: p.created_at)
        closed = await store.closed_since(now - timedelta(hours=RECENT_HOURS))

        role_names = {r.id: r.name for r in ctx.oncall.roles.values()} if ctx.oncall else {}

        role_units = {r.id: r.unit for r in ctx.oncall.roles.values()} if ctx.oncall else {}
        wards = ctx.policy.clinical.wards if ctx.policy.clinical else {}

        async def rows(pages: list[Any]) -> list[dict[str, Any]]:
            out = []
            for page in pages:
                clinical = await self.clinical.store.alert_of_page(page.page_id)
                row = alert_row(
                    page, clinical, await store.seen(page.page_id), escalation_for(ctx, page), now, tz, ctx.name, role_names,
                )
                # Whose alert it is (the console shows each charge nurse their units'): the
                # role's unit, and the unit of the patient's ward as last known.
                ward = wards.get(str((clinical or {}).get("ward") or ""))
                row["units"] = [u for u in (role_units.get(page.role), ward.unit if ward else None) if u]
                out.append(row)
            return out

        unroutable = []
        for item in await self.clinical.store.undelivered():
            try:
                why = json.loads(item.get("result") or "{}").get("routing", "")
            except ValueError:
                why = str(item.get("result") or "")
            unroutable.append({
                "facility": item["facility"], "control_id": item["control_id"],
                "message_type": item["message_type"], "why": why,
            })
        return web.json_response({
            "timezone": tz, "now": now.isoformat(),
            "open": await rows(opened), "recent": await rows(closed), "unroutable": unroutable,
        })

    async def repage(self, request: web.Request) -> web.Response:
        """Page again everyone an open page has paged so far: the notice goes out through the
        page outbox like any page (so it survives a restart), and the console's user is on
        record as having asked."""
        if not self._authorised(request):
            return web.json_response({"error": "unauthorised"}, status=401)
        try:
            body = await request.json()
            alert_id, actor = str(body["alert_id"]), str(body["actor"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "body must be JSON with alert_id and actor"}, status=400)
        ctx = self.oncall.ctx
        async with ctx.page_lock:
            page = next((p for p in await ctx.store.pages("open") if p.alert_id == alert_id), None)
            if page is None:
                return web.json_response({"error": "no open page with this alert ID"}, status=404)
            # The outbox writes staff numbers in a page's text as names (ctx.words).
            who = ctx.staff_of(actor) or actor
            action = Action(
                "page", staff=page.paged, step=page.step, priority=page.priority,
                message=f"再次呼叫 Re-paged from the console by {who}: {page.subject or page.role_name}",
            )
            await self.oncall.outbox.commit(page, [action])
        clinical = await self.clinical.store.alert_of_page(page.page_id)
        await ctx.audit.record(
            actor=actor, action="console.repage", object=page.role, room=page.room_id, outcome="success",
            patient=(clinical or {}).get("patient_id"),
            process="appservice", details={"alert": page.alert_id, "paged": ",".join(page.paged)},
        )
        await self.oncall.flush()
        return web.json_response({"alert_id": page.alert_id, "paged": [ctx.name(s) for s in page.paged]})

    async def handover(self, request: web.Request) -> web.Response:
        """Hand an open page to another named member of staff: they are paged with the page's
        text and priority, the page's escalation runs from them, and the sender and the room
        are told who took over and who handed it over — all through the page outbox, so a
        restart loses nothing. On record as ``console.handover`` under the rule the console
        applied."""
        if not self._authorised(request):
            return web.json_response({"error": "unauthorised"}, status=401)
        try:
            body = await request.json()
            alert_id, actor, given = str(body["alert_id"]), str(body["actor"]), str(body["to"])
            rule = str(body.get("rule") or "")
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "body must be JSON with alert_id, actor and to"}, status=400)
        ctx = self.oncall.ctx
        person = ctx.policy.staff_for_localpart(staff_localpart(given))
        if person is None or person.staff_number != given:
            return web.json_response({"error": f"no member of staff {given!r} in the policy"}, status=400)
        by = ctx.staff_of(actor) or actor
        async with ctx.page_lock:
            page = next((p for p in await ctx.store.pages("open") if p.alert_id == alert_id), None)
            if page is None:
                return web.json_response({"error": "no open page with this alert ID"}, status=404)
            new, actions = hand_over(page, person.staff_number, by, ctx.local_now(), LEAD_TIMEOUT_SECONDS)
            await self.oncall.outbox.commit(new, actions)
        clinical = await self.clinical.store.alert_of_page(page.page_id)
        await ctx.audit.record(
            actor=actor, action="console.handover", object=page.role, room=page.room_id, outcome="success",
            patient=(clinical or {}).get("patient_id"), rule=rule or None, process="appservice",
            details={"alert": page.alert_id, "to": person.staff_number, "before": ",".join(page.paged)},
        )
        await self.oncall.flush()
        return web.json_response({
            "alert_id": page.alert_id, "to": ctx.name(person.staff_number),
            "before": [ctx.name(s) for s in page.paged],
        })

    async def fatigue(self, request: web.Request) -> web.Response:
        """The pages of one ISO week (``?week=2026-W49``; default: this week on the service's
        clock), without patient data: what the alarm-fatigue report counts."""
        if not self._authorised(request):
            return web.json_response({"error": "unauthorised"}, status=401)
        ctx = self.oncall.ctx
        tz_name = ctx.oncall.timezone if ctx.oncall else "UTC"
        tz = ZoneInfo(tz_name)
        now = ctx.clock.now()
        week = request.query.get("week") or week_of(now, tz)
        try:
            since, until = week_bounds(week, tz)
        except ValueError:
            return web.json_response({"error": "week must look like 2026-W49"}, status=400)
        pages = await ctx.store.pages_between(since, until)
        return web.json_response({
            "timezone": tz_name, "week": week, "this_week": week_of(now, tz), "now": now.isoformat(),
            "pages": [
                {
                    "role": p.role, "created_at": p.created_at.isoformat(), "priority": p.priority,
                    "paged": list(p.paged), "step": p.step, "acked_by": p.acked_by,
                    "acked_at": p.acked_at.isoformat() if p.acked_at else None,
                }
                for p in pages
            ],
        })
