"""HL7 v2 from the hospital information system into the conversation.

Intake (the MLLP listener) and delivery are separate on purpose: a message is parsed,
validated and stored before its ACK (AA) goes back, so an acknowledged message survives any
crash; a malformed one gets AE/AR with the reason and a dead-letter record. A delivery loop
then routes stored messages by the policy's ``clinical:`` rules — a notice in the ward's room,
and for critical results a page to the ward's on-duty roles through the on-call machinery —
and marks each delivered. Sends carry IDs derived from the stored message, so a redelivery
after a crash is not shown twice.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import quote

from aiohttp import web

from appservice.audit_client import AuditClient
from appservice.clinical.fhir_intake import MESSAGE_PREFIX
from appservice.clinical.mllp_listener import MllpLimits, MllpListener
from appservice.clinical.store import ClinicalStore, Inbound
from appservice.homeserver import Homeserver, HomeserverUnreachable, MatrixCallFailed
from appservice.oncall.service import OncallService
from appservice.timing import Steps, point, report, step, tracking
from bridges.fhir.events import extract_resource
from bridges.fhir.outcome import FhirInvalid
from bridges.hl7.ack import ack
from bridges.hl7.events import extract
from bridges.hl7.parse import Hl7Error, Message, parse, parse_header
from bridges.records import AdtEvent, ImagingEvent, OrderEvent, ReportEvent, ResultEvent
from carematrix.clinical_routing import Route, WardClue, route
from carematrix.policy.clinical import ClinicalPolicy, Ward
from carematrix.policy.holder import PolicyHolder
from carematrix.policy.oncall import role_localpart
from carematrix.policy.org import staff_localpart
from carematrix.policy.rooms import ROOM_CLASS_EVENT
from carematrix.rules.protection import PRIORITY_FIELD

log = logging.getLogger("carematrix.appservice.clinical")

ADT_EVENTS = {"A01": "admission", "A04": "admission", "A02": "transfer", "A03": "discharge", "A08": "update"}
# Which system message a notice came from (facility/source and its control ID or FHIR key).
SOURCE_FIELD = "org.carematrix.hl7"


class ClinicalService:
    def __init__(
        self, store: ClinicalStore, holder: PolicyHolder, matrix: Homeserver, oncall: OncallService,
        audit: AuditClient, bot_user_id: str, his_token: str | None,
    ) -> None:
        self.store = store
        self.holder = holder
        self.matrix = matrix
        self.oncall = oncall
        self.audit = audit
        self.bot = bot_user_id
        self.his_token = his_token
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()  # a critical result waits: finish the current item, re-read
        self._rooms: dict[str, str] = {}  # ward-room alias -> room ID
        self.source_tokens: dict[str, str] = {}  # FHIR source -> its bearer token
        self.cases: Any = None  # CaseService, when case rooms are wired in
        self.fetch_resource: Any = None  # async "Type/id" -> resource, when a FHIR server is connected
        # async patient ID -> (ward code, where it was found), from the hospital's EMR
        self.locate_ward: Any = None
        # (facility, control ID) of a critical result -> when it arrived and was stored
        # (perf_counter): its delivery's timing counts from its arrival.
        self._arrivals: dict[tuple[str, str], tuple[float, float]] = {}
        self._released: dict[int, asyncio.Event] = {}  # critical result being delivered -> the queue may move on
        self._finishing: dict[int, asyncio.Task[None]] = {}  # released; its pages are still being sent
        self._spare_lock = asyncio.Lock()

    def wake(self, urgent: bool = False) -> None:
        """New input is stored: deliver now rather than at the next poll."""
        self._wake.set()
        if urgent:
            self._urgent.set()

    @property
    def policy(self) -> ClinicalPolicy | None:
        return self.holder.current.clinical

    # -- intake -------------------------------------------------------------------------

    async def serve(self, host: str, port: int, limits: MllpLimits | None = None) -> asyncio.Server:
        return await MllpListener(self.receive, self._reject, limits or MllpLimits()).serve(host, port)

    async def receive(self, payload: bytes, peer: str) -> bytes:
        """The ACK for one inbound message: AA only once it is stored."""
        try:
            message = parse(payload)
        except Hl7Error as exc:
            # The header alone may still parse: the ACK then names the message it refuses.
            try:
                header = parse_header(payload)
            except Hl7Error:
                header = None
            return await self._reject(header, payload, peer, "AR", exc)
        policy = self.policy
        if policy is None or message.sending_facility not in policy.senders:
            error = Hl7Error("207", f"sending facility '{message.sending_facility}' is not allowed to send here", "MSH-4")
            return await self._reject(message, payload, peer, "AR", error)
        try:
            event = extract(message)
        except Hl7Error as exc:
            return await self._reject(message, payload, peer, "AE", exc)
        urgent = isinstance(event, ResultEvent) and bool(event.critical_observations)
        arrived = time.perf_counter()
        try:
            new = await self.store.accept(
                message.sending_facility, message.control_id, message.message_type, payload, urgent,
                patient_id=getattr(getattr(event, "patient", None), "id", None),
            )
        except Exception as exc:  # the store is down: the sender must retry, nothing is lost
            log.exception("could not store HL7 %s", message.control_id)
            return ack(message, "AE", "message could not be stored; please resend", Hl7Error("207", str(exc)[:200], "MSH-10"))
        if urgent and new:
            self._arrivals[(message.sending_facility, message.control_id)] = (arrived, time.perf_counter())
        self.wake(urgent and new)  # stored is enough to deliver; the record of its receipt follows
        await self.audit.record(
            actor=f"hl7:{message.sending_facility}", action="bridge.hl7.received", object=message.control_id,
            outcome="success", source=peer, process="appservice",
            details={"type": message.message_type, "duplicate": not new},
        )
        return ack(message, "AA")

    async def _reject(self, message: Message | None, payload: bytes, peer: str, code: str, error: Hl7Error) -> bytes:
        await self.store.dead_letter(peer, payload, error.code, f"{error.location}: {error.text}")
        log.warning("HL7 from %s rejected (%s %s): %s", peer, code, error.location, error.text)
        await self.audit.record(
            actor=f"hl7:{message.sending_facility if message else peer}", action="bridge.hl7.rejected",
            object=message.control_id if message else "unparsed", outcome="failure", source=peer,
            process="appservice", details={"code": error.code, "location": error.location},
        )
        return ack(message, code, error.text, error)  # type: ignore[arg-type]

    # -- delivery -----------------------------------------------------------------------

    async def deliver_loop(self) -> None:
        """Oldest first, but a critical result stored meanwhile is taken next: the current
        batch is abandoned (its rest stays pending) and the queue re-read, urgent first.

        A critical result holds the queue only until its first person is told (the result in
        the ward room, the page in a chat they are in) or its alert room is being made; its
        pages are then sent beside the next critical result, so a burst of them does not wait
        on each other's paging or on the homeserver making a room. Routine messages wait until every critical result being
        finished is done, so they still find each page it opens (a transfer brings the new
        ward into it)."""
        try:
            await self._deliver_forever()
        finally:
            # Stopping: what is still being sent is sent again after the restart (the items
            # stay pending), without being shown twice.
            finishing = list(self._finishing.values())
            for task in finishing:
                task.cancel()
            await asyncio.gather(*finishing, return_exceptions=True)

    async def _deliver_forever(self) -> None:
        backlog = False
        while True:
            if not backlog:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                except TimeoutError:
                    pass
            self._wake.clear()
            self._urgent.clear()
            try:
                batch = await self.store.pending()
                backlog = False
                for item in batch:
                    if item.id in self._finishing:
                        continue
                    if not item.urgent and self._finishing:
                        await self._settle()
                        backlog = True  # re-read: the queue may have changed meanwhile
                        break
                    await self._deliver(item)
                    backlog = True
                    if self._urgent.is_set():
                        break
            except Exception:
                log.exception("clinical delivery failed; retrying")
                backlog = False
                await asyncio.sleep(1)

    async def _settle(self) -> None:
        """Until every critical result being finished is done, or another one arrives."""
        finished = asyncio.ensure_future(asyncio.wait(list(self._finishing.values())))
        urgent = asyncio.ensure_future(self._urgent.wait())
        try:
            await asyncio.wait({finished, urgent}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished.cancel()
            urgent.cancel()

    async def _deliver(self, item: Inbound) -> None:
        if not item.urgent:
            await self._deliver_item(item)
            return
        arrival = self._arrivals.pop((item.facility, item.control_id), None)
        released = self._released[item.id] = asyncio.Event()
        with tracking(f"{item.facility}/{item.control_id}", arrival[0] if arrival else None) as steps:
            if arrival:
                steps.between("store", arrival[0], arrival[1])
                steps.between("queued", arrival[1], time.perf_counter())
            delivery = asyncio.create_task(self._deliver_urgent(item, steps))
        first = asyncio.ensure_future(released.wait())
        try:
            await asyncio.wait({delivery, first}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            first.cancel()
        if delivery.done():
            delivery.result()  # a failure before the queue moved on is the loop's, as for any item
        else:
            self._finishing[item.id] = delivery

    async def _deliver_urgent(self, item: Inbound, steps: Steps) -> None:
        try:
            await self._deliver_item(item)
        except Exception:
            if item.id not in self._finishing:
                raise
            # The rest (pages, the alert room) failed. The item is still pending: the loop
            # delivers it again, and what was sent is not sent twice.
            log.exception("critical result %s from %s: delivery failed part-way; retrying", item.control_id, item.facility)
            await asyncio.sleep(1)
        finally:
            report(steps)
            self._released.pop(item.id, None)
            if self._finishing.pop(item.id, None) is not None:
                self._wake.set()

    def _release(self, item: Inbound, why: str = "first person told") -> None:
        """The queue may move on: a person has the critical result in front of them (or all
        that is left before they do is the homeserver's work)."""
        released = self._released.get(item.id)
        if released is not None and not released.is_set():
            point(why)
            released.set()

    async def _deliver_item(self, item: Inbound) -> None:
        policy = self.policy
        if policy is None:
            return
        event = await self._event_of(item)
        if event is None:
            await self.store.done(item.id, "ignored", "carries no event the hospital routes")
            return
        visit = getattr(event, "visit", None)
        with step("patient record"):
            known = await self.store.patient(event.patient.id) or {}  # read before an ADT updates it
        if item.urgent and not isinstance(event, AdtEvent) and not (visit and visit.ward):
            # Only an urgent item overtakes movements still queued (routine ones go in order):
            # it is routed where they place the patient; they follow in their turn.
            with step("queued movements read"):
                known = _placed(known, await self._movements_before(item, event.patient.id))
        kind, patient, message_ward, summary = await self._describe(event, known)
        rules = policy.rules_for(kind)
        if isinstance(event, AdtEvent):
            room_id = await self._deliver_adt(item, event, kind, patient, summary, rules, known)
            if room_id is False:
                return
        else:
            room_id = await self._deliver_clinical(item, event, kind, patient, message_ward, summary, rules, known)
            if room_id is False:
                return
        consult = policy.cases.consult_orders or {}
        if isinstance(event, OrderEvent) and event.test_code in consult and event.order_control == "NW" and self.cases:
            await self.cases.open_for_order(
                self._staff_user(event.ordering_provider), event.patient.id, consult[event.test_code],
                f"{item.facility}:{event.placer or item.control_id}", event.test or event.test_code,
            )
        if isinstance(event, ImagingEvent) and self.cases is not None:
            await self.cases.on_study(event.patient.id, event.study_uid, f"{item.facility}-{item.control_id}")
        for rule in rules:
            if "ordering_provider" in rule.notify:
                await self._tell_ordering_provider(item, event, rule.priority, summary, patient)
        await self.audit.record(
            actor=self.bot, action="bridge.clinical.delivered", object=item.control_id, room=room_id or None,
            patient=patient.get("id") or None, outcome="success", process="appservice",
            details={"event": kind, "source": item.facility, "type": item.message_type},
        )

    async def _deliver_adt(
        self, item: Inbound, event: AdtEvent, kind: str, patient: dict[str, str], summary: str,
        rules: list[Any], known: dict[str, Any],
    ) -> str | None | bool:
        """An admission or update is told in the patient's ward; a transfer in the ward left
        and the ward joined; a discharge in the ward left. Open critical pages for the patient
        follow a transfer: the new ward's roles are brought in. False: undeliverable (reported)."""
        policy = self.policy
        assert policy is not None
        current = event.visit.ward or (known.get("ward") if kind == "discharge" else "")
        wards = [current]
        if kind == "transfer":
            wards = [event.prior_ward or known.get("ward") or "", event.visit.ward]
        codes = [c for c in dict.fromkeys(wards) if c]
        posting = any(r.post for r in rules)
        found = [policy.wards[c] for c in codes if c in policy.wards]
        missing = [c for c in codes if c not in policy.wards]
        if posting and not found:
            why = f"ward {', '.join(repr(c) for c in missing)} is not in the clinical policy" if missing else "the message names no ward"
            await self._undeliverable(item, kind, patient, summary, f"{why}: nowhere to post")
            return False
        if posting and missing:
            log.warning("%s %s: ward(s) %s not in the clinical policy; told %s", item.message_type, item.control_id,
                        ", ".join(missing), ", ".join(w.code for w in found))
        first_room: str | None = None
        for ward in found:
            room_id = await self._ward_room(policy, ward)
            first_room = first_room or room_id
            for rule in rules:
                if rule.post:
                    await self._post(room_id, item, rule.priority, summary, patient, txn_suffix=f"post-{ward.code}")
        if kind == "transfer" and event.visit.ward in policy.wards:
            await self._follow_transfer(item, patient, policy.wards[event.visit.ward])
        await self.store.done(item.id, "delivered", json.dumps({"kind": kind, "routing": ", ".join(f"ward {w.code}" for w in found)}))
        return first_room

    async def _deliver_clinical(
        self, item: Inbound, event: Any, kind: str, patient: dict[str, str], message_ward: str | None,
        summary: str, rules: list[Any], known: dict[str, Any],
    ) -> str | None | bool:
        policy = self.policy
        assert policy is not None
        if not any(r.post or r.page for r in rules):
            await self.store.done(item.id, "delivered", json.dumps({"kind": kind, "routing": "no ward needed"}))
            return None
        clues = [WardClue(message_ward, "the message's own location"), WardClue(known.get("ward"), "the patient's last ADT")]
        ordering = self._staff_number(getattr(event, "ordering_provider", "") or "")
        found = route(policy, item.facility, rules, clues, ordering)
        first: tuple[str, ...] = ()
        reachable: asyncio.Task[dict[str, str]] | None = None
        if found.fallback:
            # While the EMR is asked, find out whether whoever the fallback pages first can be
            # told in a chat they are in: if the EMR knows no ward either, no time is lost.
            first = self._first_paged(found)
            reachable = asyncio.create_task(self._in_direct_chat(first))
        if found.ward is None and self.locate_ward is not None:
            with step("locate ward (ADT, EMR)"):
                located = await self._locate(patient["id"])
            if located is not None:
                found = route(policy, item.facility, rules, [*clues, WardClue(*located)], ordering)
        if not found.fallback and reachable is not None:
            reachable.cancel()
        if not found.deliverable:
            await self._undeliverable(item, kind, patient, summary, found.how)
            return False
        subject = summary.split("\n", 1)[0]
        condition = next((r.acknowledged_when for r in rules if r.page), "all")
        if found.ward is not None:
            with step("ward room"):
                room_id = await self._ward_room(policy, found.ward)
            event_id = ""
            opened = 0
            for rule in rules:
                if rule.post:
                    with step("post result"):
                        event_id = await self._post(room_id, item, rule.priority, summary, patient)
                    self._release(item)
                for key in rule.page:
                    role_id = found.ward.roles.get(key)
                    if role_id is None:
                        continue
                    with step(f"page {key}"):
                        await self._page(item, role_id, room_id, event_id, rule.priority, subject, patient, key)
                    self._release(item)
                    opened += 1
                if rule.page and not opened:
                    # The ward maps none of the roles the rule pages: the safety net answers.
                    net = policy.safety_net_for(item.facility)
                    if net:
                        await self._page(item, net, room_id, event_id, rule.priority, subject, patient, "safety-net")
                        found = Route(found.ward, f"{found.how}; it has no {'/'.join(rule.page)} role — paged {net}")
        else:
            rule = next(r for r in rules if r.page)
            net = found.safety_net or ""
            lead = f"staff:{found.lead}" if found.lead else None
            # Whoever is paged first hears of it at once where they already are; the alert
            # room (made next, with them invited) is where the page then lives.
            # No ward after the EMR was asked: there was none before either, so the fallback
            # (and the direct-chat read) started then.
            assert reachable is not None
            with step("direct chats of the first paged"):
                rooms = await reachable
            told: list[str] = []
            if rooms:
                with step("page told ahead"):
                    told = await self.oncall.page_ahead(
                        self._page_id(item, "safety-net"), net, rooms, priority=rule.priority, subject=subject,
                        lead=lead,
                        note=f"随后将为该患者建立告警房间。 Routing: {found.how}. An alert room for this patient follows.",
                    )
                if told:
                    self._release(item)
            # Nobody told ahead: the invite into the alert room is the first thing they see,
            # so it comes from a room made ahead if there is one.
            with step("alert room"):
                room_id = await self._alert_room(item, patient, net, first, made_ahead=not told)
            text = f"{summary}\n路由 Routing: {found.how}."
            with step("post result"):
                event_id = await self._post(room_id, item, rule.priority, text, patient)
            with step("page safety-net"):
                await self._page(item, net, room_id, event_id, rule.priority, subject, patient, "safety-net", lead)
            log.warning("%s %s: %s", item.message_type, item.control_id, found.how)
            with step("tell integration room"):
                await self._tell_integration(
                    f"{subject}\n无病区 No ward: {found.how}. 告警房间 Alert room: https://matrix.to/#/{room_id}"
                )
        await self.store.done(item.id, "delivered", json.dumps({"kind": kind, "routing": found.how, "acknowledged_when": condition}))
        if found.ward is None:
            # Not part of this delivery: it is on record as delivered first (a failure here
            # must not deliver it again).
            with step("next alert room made ahead"):
                await self.keep_spare_alert_room()
        return room_id

    def _first_paged(self, found: Route) -> tuple[str, ...]:
        """Staff numbers a fallback route pages first: the ordering doctor, else the safety
        net's holders on duty now."""
        if not found.safety_net:
            return ()
        return self.oncall.first_paged(found.safety_net, f"staff:{found.lead}" if found.lead else None)

    async def _in_direct_chat(self, staff: tuple[str, ...]) -> dict[str, str]:
        """Of these staff, those who have joined their direct chat with the service: staff
        number -> room. A room they were only invited to (or left) does not reach them. Only
        a head start: on any failure they are reached in the alert room as ever."""
        rooms = {}
        for number in staff:
            user_id = self.oncall.user_id(number)
            try:
                room_id = await self.store.direct_room(user_id)
            except Exception as exc:  # noqa: BLE001 - the alert room reaches them anyway
                log.info("direct chat with %s not usable for a page (%s)", user_id, exc)
                continue
            if room_id is not None and await self.oncall.ctx.membership(room_id, user_id) == "join":
                rooms[number] = room_id
        return rooms

    async def _movements_before(self, item: Inbound, patient_id: str) -> list[AdtEvent]:
        """This patient's admissions and transfers still queued behind the backlog, oldest first."""
        events = []
        for earlier in await self.store.pending_movements_before(item.id, patient_id):
            try:
                event = await self._event_of(earlier)
            except Exception:  # noqa: BLE001 - a broken queued message is the loop's business
                continue
            if isinstance(event, AdtEvent) and event.patient.id == patient_id:
                events.append(event)
        return events

    @staticmethod
    def _page_id(item: Inbound, key: str) -> str:
        return f"hl7-{item.facility}-{item.control_id}-{key}"

    async def _page(
        self, item: Inbound, role_id: str, room_id: str, event_id: str, priority: str, subject: str,
        patient: dict[str, str], key: str, lead: str | None = None,
    ) -> None:
        page_id = self._page_id(item, key)
        await self.oncall.page_for_system(
            page_id, role_id, room_id, event_id, self.bot, priority=priority, subject=subject, lead=lead,
        )
        await self.store.link_alert(item.facility, item.control_id, page_id, role_id, patient.get("id"))

    async def _follow_transfer(self, item: Inbound, patient: dict[str, str], ward: Any) -> None:
        """The patient moved while a page about them is open: the new ward hears of it and its
        roles are paged for the same alert (the old pages go on until acknowledged)."""
        policy = self.policy
        assert policy is not None
        room_id = await self._ward_room(policy, ward)
        followed: set[tuple[str, str]] = set()
        for facility, control_id, page_id, _role in await self.store.open_alerts_for(patient["id"]):
            page = await self.oncall.store.page(page_id)
            if page is None or page.state != "open" or page.room_id == room_id or (facility, control_id) in followed:
                continue
            followed.add((facility, control_id))  # one alert, however many of its pages are open
            text = f"未结束的告警随患者转至 {ward.code}。 Open alert follows the patient to {ward.code}: {page.subject}"
            origin = Inbound(item.id, facility, control_id, b"")
            event_id = await self._post(room_id, origin, page.priority, text, patient, txn_suffix=f"follow-{item.id}")
            for key, role_id in ward.roles.items():
                moved = f"hl7-{facility}-{control_id}-to-{ward.code}-{key}"
                await self.oncall.page_for_system(
                    moved, role_id, room_id, event_id, self.bot, priority=page.priority, subject=page.subject,
                )
                await self.store.link_alert(facility, control_id, moved, role_id, patient["id"])

    async def _locate(self, patient_id: str) -> tuple[str, str] | None:
        try:
            return await self.locate_ward(patient_id)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - the EMR being down must not stop the alert
            log.warning("patient %s: the EMR could not be asked for the current encounter (%s)", patient_id, exc)
            return None

    async def _alert_room(
        self, item: Inbound, patient: dict[str, str], net_role: str, first: tuple[str, ...], *, made_ahead: bool,
    ) -> str:
        """A room of its own for an alert with no ward: the people paged see this alert and
        nothing else (not a doctor's private chat, not another unit's room). The people paged
        first (staff numbers ``first``) are invited at once: for anyone not told ahead in a
        chat, the invite is the first thing their phone shows. With ``made_ahead``, a room made
        ahead is taken if there is one (naming it and inviting them are two requests, making a
        room a dozen events); else the room is made now, the role account invited with them.
        Either way the queue moves on before the rest of the room is settled."""
        room_id = await self.store.alert_room(item.id)
        if room_id is None and made_ahead:
            room_id = await self.store.take_spare_alert_room(item.id)
        if room_id is not None:
            # Ours already (a redelivery, or the room made ahead): named and its people
            # invited, which changes nothing where it was done before.
            await self.matrix.call(
                "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.name", {"name": _alert_room_name(patient)}
            )
            for staff in first:
                user_id = self.oncall.user_id(staff)
                try:
                    await self.matrix.call("POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/invite", {"user_id": user_id})
                except MatrixCallFailed as exc:  # their page brings them in, or pages them directly
                    log.info("alert room %s: %s not invited yet (%s)", room_id, user_id, exc.reason)
            self._release(item)
            with step("alert room settled"):
                await self._settle_alert_room(room_id, item, net_role)
            return room_id
        # The queue moves on while the homeserver makes the room: other results must not wait
        # for its dozen events.
        self._release(item, "queue released: alert room being made")
        role_user = self.matrix.uid(role_localpart(net_role)) if net_role else None
        created = await self.matrix.call("POST", "/_matrix/client/v3/createRoom", {
            **_alert_room_content(_alert_room_name(patient), _alert_room_topic(item), role_user),
            # People first: Synapse sends the invites one after the other, last of all.
            "invite": [u for u in (*(self.oncall.user_id(s) for s in first), role_user) if u],
            # The message's ID keeps two alert rooms created in the same millisecond from
            # hashing to one room ID (room version 12).
            "creation_content": {"m.federate": False, SOURCE_FIELD: {"facility": item.facility, "control_id": item.control_id}},
        })
        room_id = str(created["room_id"])
        await self.store.set_alert_room(item.id, room_id)
        return room_id

    async def _settle_alert_room(self, room_id: str, item: Inbound, net_role: str) -> None:
        """What a room made ahead cannot know until it is used: the safety-net role account
        may invite (it brings in whoever the page escalates to), and the topic names the
        source. Read first, so a room settled before (a redelivery) is left as it is; a room
        made for the alert has both from its creation and is not settled at all."""
        base = f"/_matrix/client/v3/rooms/{quote(room_id)}/state"
        role_user = self.matrix.uid(role_localpart(net_role)) if net_role else None
        levels = await self.matrix.call("GET", f"{base}/m.room.power_levels")
        if role_user and role_user not in (levels.get("users") or {}):
            levels["users"] = {**(levels.get("users") or {}), role_user: 50}
            await self.matrix.call("PUT", f"{base}/m.room.power_levels", levels)
        topic = _alert_room_topic(item)
        try:
            current = (await self.matrix.call("GET", f"{base}/m.room.topic")).get("topic")
        except MatrixCallFailed:
            current = None
        if current != topic:
            await self.matrix.call("PUT", f"{base}/m.room.topic", {"topic": topic})

    async def keep_spare_alert_room(self) -> None:
        """One alert room made ahead, for the next critical result with no ward whose people
        cannot be told in a chat they are in: it reaches them sooner. Made at start and after
        one is used, never while a result waits on it; a failure leaves the next alert to make
        its own room, as without it."""
        policy = self.policy
        if policy is None or not policy.safety_net:
            return
        async with self._spare_lock:
            try:
                if await self.store.spare_alert_rooms() > 0:
                    return
                created = await self.matrix.call("POST", "/_matrix/client/v3/createRoom", {
                    **_alert_room_content(
                        "危急值 Critical result",
                        "为下一个无病区记录的危急值预先建立。 Made ahead for the next critical result with no ward on record.",
                        None,
                    ),
                    "creation_content": {"m.federate": False, SOURCE_FIELD: {"made_ahead": uuid.uuid4().hex}},
                })
                await self.store.add_spare_alert_room(str(created["room_id"]))
            except (MatrixCallFailed, HomeserverUnreachable) as exc:
                log.warning("no alert room made ahead (%s); the next one is made when needed", exc)

    async def _undeliverable(self, item: Inbound, kind: str, patient: dict[str, str], summary: str, why: str) -> None:
        """Accepted but nobody could be told: on record, in the log and in the integration room."""
        await self.store.done(item.id, "unroutable", json.dumps({"kind": kind, "routing": why}))
        log.error("%s %s from %s (%s) could not be delivered: %s", item.message_type, item.control_id, item.facility, kind, why)
        await self.audit.record(
            actor=self.bot, action="bridge.clinical.undeliverable", object=item.control_id,
            patient=patient.get("id") or None, outcome="failure", process="appservice",
            details={"event": kind, "source": item.facility, "reason": why[:200]},
        )
        await self._tell_integration(
            f"未送达 UNDELIVERED {kind} from {item.facility} (message {item.control_id}): {summary.split(chr(10), 1)[0]}\n"
            "无人收到此消息；请电话转达，并修正病区映射或 ADT 数据源。 "
            f"Why: {why}. Nobody was told; route it by phone and fix the ward mapping or ADT feed."
        )

    async def _tell_integration(self, text: str) -> None:
        policy = self.policy
        alias = policy.integration_room if policy else None
        if not alias:
            return
        try:
            room_id = await self._room_by_alias(alias)
            await self.matrix.call(
                "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/{uuid.uuid4().hex}",
                {"msgtype": "m.notice", "body": text, PRIORITY_FIELD: "urgent"},
            )
        except MatrixCallFailed as exc:
            log.error("could not tell the integration room #%s: %s", alias, exc)

    def _staff_number(self, provider: str) -> str | None:
        user_id = self._staff_user(provider)
        return self.oncall.staff_of(user_id) if user_id else None

    async def _event_of(self, item: Inbound) -> Any:
        if not item.message_type.startswith(MESSAGE_PREFIX):
            return extract(parse(item.raw))
        payload = json.loads(item.raw)
        resource = payload.get("resource")
        if resource is None:
            # An id-only Subscription notification: the resource is read now, from the
            # hospital's FHIR server (a failure retries, the event stays queued).
            resource = await self.fetch_resource(payload["reference"])
        try:
            return extract_resource(resource, payload.get("included") or {})
        except FhirInvalid as exc:
            log.warning("FHIR %s cannot be routed: %s", item.control_id, exc.issues[0].diagnostics if exc.issues else exc)
            return None

    async def _describe(self, event: Any, known: dict[str, Any]) -> tuple[str, dict[str, str], str | None, str]:
        """(event kind, patient, the ward the message itself names, the notice text)."""
        patient = {"id": event.patient.id, "name": event.patient.name}
        if isinstance(event, AdtEvent):
            kind = ADT_EVENTS.get(event.trigger, "update")
            bed = event.visit.bed
            await self.store.remember_patient(
                event.patient.id, event.patient.name, None if kind == "discharge" else event.visit.ward, bed
            )
            ward = event.visit.ward or (known.get("ward") if kind == "discharge" else "") or ""
            where = f"{ward} bed {bed}" if bed else ward
            left = event.prior_ward or known.get("ward") or "an unknown ward"
            text = {
                "admission": f"入院 Admission: {event.patient.name} ({event.patient.id}) to {where}",
                "transfer": f"转科 Transfer: {event.patient.name} ({event.patient.id}) from {left} to {where}",
                "discharge": f"出院 Discharge: {event.patient.name} ({event.patient.id}) from {where}",
            }.get(kind, f"更新 Update: {event.patient.name} ({event.patient.id}), {where}")
            return kind, patient, event.visit.ward, text + self._link("patient", patient_id=event.patient.id)
        if not patient["name"]:
            patient["name"] = known.get("name") or event.patient.id
        name = patient["name"]
        visit = getattr(event, "visit", None)
        own_ward = visit.ward if visit and visit.ward else None
        ward = own_ward or known.get("ward")
        bed = (visit.bed if visit and visit.bed else None) or (known.get("bed") if ward == known.get("ward") else None) or ""
        where = f" ({ward} bed {bed})" if bed else (f" ({ward})" if ward else "")
        link = self._link("patient", patient_id=event.patient.id)
        if isinstance(event, ResultEvent):
            critical = event.critical_observations
            shown = critical or event.observations
            values = "; ".join(
                f"{o.text or o.code} {o.value} {o.units}".strip() + (f" [{'/'.join(o.flags)}]" if o.flags else "")
                for o in shown
            )
            kind = "critical_result" if critical else "result"
            head = "危急值 CRITICAL RESULT" if critical else "检验结果 Result"
            return kind, patient, own_ward, f"{head}: {name} ({event.patient.id}){where} — {event.test}: {values}" + link
        if isinstance(event, ReportEvent):
            conclusion = f": {event.conclusion}" if event.conclusion else ""
            return "report", patient, own_ward, f"报告已出 Report ready: {event.title} for {name} ({event.patient.id}){conclusion}" + link
        if isinstance(event, ImagingEvent):
            what = " ".join(x for x in (" ".join(event.modalities), event.description) if x) or "study"
            accession = f", accession {event.accession}" if event.accession else ""
            study = self._link("study", study_uid=event.study_uid, accession=event.accession, patient_id=event.patient.id)
            return "imaging", patient, own_ward, f"影像可查看 Images available: {what} for {name}{where}{accession}" + (study or link)
        assert isinstance(event, OrderEvent)
        return "order", patient, own_ward, f"医嘱 Order {event.order_control}: {event.test} for {name}{where}"

    def _link(self, kind: str, **values: str) -> str:
        url = self.policy.link(kind, **values) if self.policy else None
        return f"\n{url}" if url else ""

    def _staff_user(self, provider: str) -> str | None:
        """The Matrix ID of an ordering provider (XCN "D1001^李^伟" or "D1001") on the staff list."""
        number = (provider or "").split("^", 1)[0].strip()
        person = self.oncall.policy.staff_for_localpart(staff_localpart(number)) if number else None
        return self.oncall.user_id(number) if person is not None and person.staff_number == number else None

    async def _tell_ordering_provider(
        self, item: Inbound, event: Any, priority: str, text: str, patient: dict[str, str]
    ) -> None:
        """A report goes to the person who ordered it, in their direct chat with the service."""
        staff = getattr(event, "ordering_provider", "") or ""
        user_id = self._staff_user(staff)
        if user_id is None:
            log.info("%s %s: ordering provider '%s' is not on the staff list; nobody told", item.message_type, item.control_id, staff)
            return
        room_id = await self.direct_room(user_id)
        await self._post(room_id, item, priority, text, patient, txn_suffix="tell")

    async def direct_room(self, user_id: str) -> str:
        """The service's direct chat with one member of staff, created once."""
        room_id = await self.store.direct_room(user_id)
        if room_id:
            return room_id
        created = await self.matrix.call("POST", "/_matrix/client/v3/createRoom", {
            "preset": "trusted_private_chat", "is_direct": True, "invite": [user_id],
            "name": "CareMatrix", "topic": "医院系统的报告和通知 Reports and notices from the hospital systems",
        })
        room_id = str(created["room_id"])
        await self.store.set_direct_room(user_id, room_id)
        return room_id

    async def _ward_room(self, policy: ClinicalPolicy, ward: Ward) -> str:
        return await self._room_by_alias(policy.ward_room.format(unit=ward.unit))

    async def _room_by_alias(self, localpart: str) -> str:
        """Resolved once per alias: org sync keeps a unit's room, so its ID does not change."""
        alias = "#" + localpart + ":" + self.matrix.server
        if alias not in self._rooms:
            data = await self.matrix.call("GET", f"/_matrix/client/v3/directory/room/{quote(alias)}")
            self._rooms[alias] = data["room_id"]
        return self._rooms[alias]

    async def _post(
        self, room_id: str, item: Inbound, priority: str, text: str, patient: dict[str, str], txn_suffix: str = "post"
    ) -> str:
        content = {
            "msgtype": "m.notice", "body": text, PRIORITY_FIELD: priority,
            SOURCE_FIELD: {"facility": item.facility, "control_id": item.control_id, "patient": patient.get("id")},
        }
        txn = f"hl7-{item.id}-{txn_suffix}"
        try:
            sent = await self.matrix.call(
                "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/{txn}", content
            )
        except MatrixCallFailed as exc:
            log.error("HL7 %s: notice to %s failed: %s", item.control_id, room_id, exc)
            raise
        return str(sent.get("event_id", ""))

    # -- the HIS asks about its alerts --------------------------------------------------

    async def alert_state(self, request: web.Request) -> web.Response:
        facility, control_id = request.match_info["facility"], request.match_info["control_id"]
        given = request.headers.get("Authorization", "")
        # The HIS token reads every alert; a FHIR source's own token reads that source's.
        tokens = [t for t in (self.his_token, self.source_tokens.get(facility)) if t]
        if not any(hmac.compare_digest(given.encode(), f"Bearer {t}".encode()) for t in tokens):
            return web.json_response({"error": "unauthorised"}, status=401)
        item = await self.store.inbox_item(facility, control_id)
        if item is None:
            return web.json_response({"error": "no message with this ID was accepted from this source"}, status=404)
        outcome = _result(item["result"])
        condition = outcome.get("acknowledged_when", "all")
        out = []
        zone = self.oncall.local_now().tzinfo
        for page_id, role in await self.store.alert_pages(facility, control_id):
            page = await self.oncall.store.page(page_id)
            if page is None:
                continue
            seen = await self.oncall.store.seen(page_id)
            out.append({
                "alert_id": page.alert_id, "role": role, "state": page.state, "step": page.step,
                "priority": page.priority,
                "paged": [self.oncall.name(s) for s in page.paged],
                "seen_by": [{"by": self.oncall.name(s), "at": at.astimezone(zone).isoformat()} for s, at in seen],
                "acknowledged_by": self.oncall.name(page.acked_by) if page.acked_by else None,
                "acknowledged_at": page.acked_at.astimezone(zone).isoformat() if page.acked_at else None,
            })
        states = [p["state"] == "acked" for p in out]
        acked = bool(states) and (all(states) if condition == "all" else any(states))
        return web.json_response({
            "facility": facility, "control_id": control_id,
            "status": {"pending": "received, not yet routed"}.get(item["state"], item["state"]),
            "routing": outcome.get("routing") or (
                ("being routed" if out else "not yet routed") if item["state"] == "pending" else item["result"]
            ),
            "acknowledged_when": condition, "acknowledged": acked, "pages": out,
        })


def _result(text: str | None) -> dict[str, Any]:
    """An inbox row's outcome: JSON since alerts report their routing, plain text before."""
    try:
        value = json.loads(text or "")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _placed(known: dict[str, Any], movements: list[AdtEvent]) -> dict[str, Any]:
    """The patient's record as it will be once the queued ``movements`` are delivered (the
    way delivering an admission, transfer or discharge records it)."""
    placed = dict(known)
    for event in movements:
        discharged = ADT_EVENTS.get(event.trigger) == "discharge"
        placed.update(name=event.patient.name, ward=None if discharged else event.visit.ward, bed=event.visit.bed)
    return placed


def _alert_room_name(patient: dict[str, str]) -> str:
    return f"危急值 Critical result · {patient.get('name') or patient.get('id')} ({patient.get('id')})"


def _alert_room_topic(item: Inbound) -> str:
    return (
        f"来自 {item.facility} 的危急值，患者无病区记录。"
        f" A critical result from {item.facility} for a patient with no ward on record."
    )


def _alert_room_content(name: str, topic: str, role_user: str | None) -> dict[str, Any]:
    """An alert room as createRoom makes it: a consult-class room only invited people see."""
    return {
        "name": name, "topic": topic, "preset": "private_chat", "visibility": "private",
        "initial_state": [
            {"type": ROOM_CLASS_EVENT, "state_key": "", "content": {"class": "consult"}},
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "shared"}},
        ],
        "power_level_content_override": {
            "users": {role_user: 50} if role_user else {}, "events_default": 0, "state_default": 50,
            "invite": 50, "kick": 50, "ban": 50, "redact": 50,
        },
    }
