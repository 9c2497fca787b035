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
import logging
from typing import Any
from urllib.parse import quote

from aiohttp import web

from appservice.audit_client import AuditClient
from appservice.clinical.store import ClinicalStore, Inbound
from appservice.oncall.service import OncallService
from bridges.hl7.ack import ack
from bridges.hl7.events import AdtEvent, OrderEvent, ResultEvent, extract
from bridges.hl7.mllp import MllpDecoder, MllpError, frame
from bridges.hl7.parse import Hl7Error, Message, parse, parse_header
from carematrix.clinical_policy import ClinicalPolicy, Ward
from carematrix.org.matrix import MatrixCallFailed, OrgMatrix
from carematrix.policy.holder import PolicyHolder
from carematrix.rules.protection import PRIORITY_FIELD

log = logging.getLogger("carematrix.appservice.clinical")

ADT_EVENTS = {"A01": "admission", "A04": "admission", "A02": "transfer", "A03": "discharge", "A08": "update"}
HL7_FIELD = "org.carematrix.hl7"


class ClinicalService:
    def __init__(
        self, store: ClinicalStore, holder: PolicyHolder, matrix: OrgMatrix, oncall: OncallService,
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
        self._rooms: dict[str, str] = {}  # ward-room alias -> room ID

    @property
    def policy(self) -> ClinicalPolicy | None:
        return self.holder.current.clinical

    # -- intake -------------------------------------------------------------------------

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._connection, host, port)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        peer = f"{host}:{port}"
        decoder = MllpDecoder()
        try:
            while data := await reader.read(65536):
                try:
                    payloads = decoder.feed(data)
                except MllpError as exc:
                    log.warning("MLLP from %s: %s; closing", peer, exc)
                    await self.store.dead_letter(peer, data[:4096], "MLLP", str(exc))
                    break
                for payload in payloads:
                    writer.write(frame(await self.receive(payload, peer)))
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

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
            extract(message)
        except Hl7Error as exc:
            return await self._reject(message, payload, peer, "AE", exc)
        try:
            new = await self.store.accept(message.sending_facility, message.control_id, message.message_type, payload)
        except Exception as exc:  # the store is down: the sender must retry, nothing is lost
            log.exception("could not store HL7 %s", message.control_id)
            return ack(message, "AE", "message could not be stored; please resend", Hl7Error("207", str(exc)[:200], "MSH-10"))
        await self.audit.record(
            actor=f"hl7:{message.sending_facility}", action="bridge.hl7.received", object=message.control_id,
            outcome="success", source=peer, process="appservice",
            details={"type": message.message_type, "duplicate": not new},
        )
        self._wake.set()
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
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                for item in await self.store.pending():
                    await self._deliver(item)
            except Exception:
                log.exception("HL7 delivery failed; retrying")
                await asyncio.sleep(1)

    async def _deliver(self, item: Inbound) -> None:
        message = parse(item.raw)
        event = extract(message)
        policy = self.policy
        if policy is None:
            return
        kind, patient, ward_code, summary = await self._describe(event)
        ward = policy.wards.get(ward_code or "")
        if ward is None:
            await self.store.done(item.id, "unroutable", f"no ward for '{ward_code}'")
            log.warning("HL7 %s: ward '%s' is not in the clinical policy", item.control_id, ward_code)
            return
        room_id = await self._ward_room(policy, ward)
        for rule in policy.rules_for(kind):
            event_id = ""
            if rule.post:
                event_id = await self._post(room_id, item, rule.priority, summary, patient)
            for key in rule.page:
                role_id = ward.roles.get(key)
                if role_id is None:
                    continue
                page_id = f"hl7-{item.facility}-{item.control_id}-{key}"
                await self.oncall.page_for_system(page_id, role_id, room_id, event_id, self.bot)
                await self.store.link_alert(item.facility, item.control_id, page_id, role_id)
        await self.store.done(item.id, "delivered", kind)
        await self.audit.record(
            actor=self.bot, action="bridge.hl7.delivered", object=item.control_id, room=room_id,
            patient=patient.get("id") or None, outcome="success", process="appservice", details={"event": kind},
        )

    async def _describe(self, event: Any) -> tuple[str, dict[str, str], str | None, str]:
        """(event kind, patient, ward code, the notice text)."""
        patient = {"id": event.patient.id, "name": event.patient.name}
        if isinstance(event, AdtEvent):
            kind = ADT_EVENTS.get(event.trigger, "update")
            bed = event.visit.bed
            await self.store.remember_patient(
                event.patient.id, event.patient.name, None if kind == "discharge" else event.visit.ward, bed
            )
            where = f"{event.visit.ward} bed {bed}" if bed else event.visit.ward
            text = {
                "admission": f"Admission: {event.patient.name} ({event.patient.id}) to {where}",
                "transfer": f"Transfer: {event.patient.name} ({event.patient.id}) from {event.prior_ward} to {where}",
                "discharge": f"Discharge: {event.patient.name} ({event.patient.id}) from {where}",
            }.get(kind, f"Update: {event.patient.name} ({event.patient.id}), {where}")
            return kind, patient, event.visit.ward, text + self._link(event.patient.id)
        known = await self.store.patient(event.patient.id) or {}
        ward = (event.visit.ward if event.visit and event.visit.ward else None) or known.get("ward")
        bed = (event.visit.bed if event.visit and event.visit.bed else None) or known.get("bed") or ""
        where = f" ({ward} bed {bed})" if bed else (f" ({ward})" if ward else "")
        if isinstance(event, ResultEvent):
            critical = event.critical_observations
            shown = critical or event.observations
            values = "; ".join(
                f"{o.text or o.code} {o.value} {o.units}".strip() + (f" [{'/'.join(o.flags)}]" if o.flags else "")
                for o in shown
            )
            kind = "critical_result" if critical else "result"
            head = "CRITICAL RESULT" if critical else "Result"
            return kind, patient, ward, f"{head}: {event.patient.name}{where} — {event.test}: {values}" + self._link(event.patient.id)
        assert isinstance(event, OrderEvent)
        return "order", patient, ward, f"Order {event.order_control}: {event.test} for {event.patient.name}{where}"

    def _link(self, patient_id: str) -> str:
        links = self.policy.deep_links if self.policy else None
        template = (links or {}).get("patient")
        return f"\n{template.format(patient_id=quote(patient_id))}" if template else ""

    async def _ward_room(self, policy: ClinicalPolicy, ward: Ward) -> str:
        """Resolved once per alias: org sync keeps a unit's room, so its ID does not change."""
        alias = "#" + policy.ward_room.format(unit=ward.unit) + ":" + self.matrix.server
        if alias not in self._rooms:
            data = await self.matrix.call("GET", f"/_matrix/client/v3/directory/room/{quote(alias)}")
            self._rooms[alias] = data["room_id"]
        return self._rooms[alias]

    async def _post(self, room_id: str, item: Inbound, priority: str, text: str, patient: dict[str, str]) -> str:
        content = {
            "msgtype": "m.notice", "body": text, PRIORITY_FIELD: priority,
            HL7_FIELD: {"facility": item.facility, "control_id": item.control_id, "patient": patient.get("id")},
        }
        txn = f"hl7-{item.id}-post"
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
        if not self.his_token or request.headers.get("Authorization") != f"Bearer {self.his_token}":
            return web.json_response({"error": "unauthorised"}, status=401)
        facility, control_id = request.match_info["facility"], request.match_info["control_id"]
        pages = await self.store.alert_pages(facility, control_id)
        if not pages:
            return web.json_response({"error": "no alert for this message"}, status=404)
        out = []
        for page_id, role in pages:
            page = await self.oncall.store.page(page_id)
            if page is None:
                continue
            out.append({
                "role": role, "state": page.state, "step": page.step,
                "paged": [self.oncall.name(s) for s in page.paged],
                "acknowledged_by": self.oncall.name(page.acked_by) if page.acked_by else None,
                "acknowledged_at": page.acked_at.isoformat() if page.acked_at else None,
            })
        acked = any(p["state"] == "acked" for p in out)
        return web.json_response({"facility": facility, "control_id": control_id, "acknowledged": acked, "pages": out})
