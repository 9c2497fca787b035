"""Helpers for tests that play the hospital information system: HL7 v2 messages over a real
MLLP socket, and what a ward's team room shows."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import aiohttp
from nio import AsyncClient

from bridges.hl7.mllp import MllpDecoder, frame
from bridges.hl7.parse import parse
from carematrix_ops.deploy.secrets import FHIR_TOKEN_PREFIX
from carematrix_ops.deploy.settings import Deployment
from tests.oncall_support import notices
from tests.support import RunningStack, eventually


def hl7(*segments: str, charset: str = "UNICODE UTF-8", control: str | None = None, facility: str = "HIS",
        kind: str = "ADT^A01") -> tuple[str, bytes]:
    control = control or uuid.uuid4().hex[:12]
    msh = f"MSH|^~\\&|HIS-APP|{facility}|CAREMATRIX|RENHE|{datetime.now():%Y%m%d%H%M%S}||{kind}|{control}|P|2.5|||||CHN|{charset}"
    text = "\r".join([msh, *segments]) + "\r"
    return control, text.encode("gb18030" if "18030" in charset else "utf-8")


async def send_mllp(stack: RunningStack, payload: bytes) -> object:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.deployment.settings.hl7_port)
    try:
        writer.write(frame(payload))
        await writer.drain()
        decoder = MllpDecoder()
        while True:
            data = await asyncio.wait_for(reader.read(65536), 30)
            assert data, "connection closed without an ACK"
            frames = decoder.feed(data)
            if frames:
                return parse(frames[0])
    finally:
        writer.close()


def ack_code(ack: object) -> str:
    return ack.get("MSA", 1)  # type: ignore[attr-defined]


async def team(stack: RunningStack, client: AsyncClient, unit: str) -> str:
    return (await client.room_resolve_alias(f"#{unit}-team:{stack.server_name}")).room_id


async def bodies(client: AsyncClient, room: str) -> list[str]:
    return [n["content"]["body"] for n in await notices(client, room)]


async def send_many(stack: RunningStack, payloads: list[bytes]) -> list[str]:
    """Send one after the other on one connection, as an HIS does; the MSA-1 code of each ACK."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.deployment.settings.hl7_port)
    decoder = MllpDecoder()
    codes = []
    try:
        for payload in payloads:
            writer.write(frame(payload))
            await writer.drain()
            acks: list[bytes] = []
            while not acks:
                data = await asyncio.wait_for(reader.read(65536), 30)
                assert data, "connection closed without an ACK"
                acks = decoder.feed(data)
            codes.append(ack_code(parse(acks[0])))
    finally:
        writer.close()
    return codes


async def alert_state(stack: RunningStack, facility: str, control_id: str) -> tuple[int, dict[str, Any]]:
    """What the HIS sees when it asks about its alert."""
    url = f"{stack.deployment.settings.appservice_url}/_carematrix/alerts/{facility}/{control_id}"
    headers = {"Authorization": f"Bearer {stack.deployment.secrets['his_token']}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.json()


async def report_ready(deployment: Deployment, doctor: str, patient: str) -> None:
    """The EMR pushes a finished report for a test ``doctor`` (staff number) ordered: the
    service tells the doctor in its direct chat with them (made for it if there is none)."""
    report = {
        "resourceType": "DiagnosticReport", "id": f"dr-{patient}", "status": "final",
        "code": {"text": "Echocardiogram report"}, "subject": {"reference": f"Patient/{patient}", "display": "孙丽"},
        "contained": [{"resourceType": "ServiceRequest", "id": "order", "status": "active", "intent": "order",
                       "subject": {"reference": f"Patient/{patient}"},
                       "requester": {"identifier": {"system": "urn:carematrix:staff", "value": doctor}}}],
        "basedOn": [{"reference": "#order"}], "issued": datetime.now().astimezone().isoformat(),
        "conclusion": "LVEF 55%",
    }
    url = f"{deployment.settings.appservice_url}/_carematrix/fhir/DiagnosticReport"
    headers = {"Authorization": f"Bearer {deployment.secrets[FHIR_TOKEN_PREFIX + 'EMR']}",
               "Content-Type": "application/fhir+json"}
    async with aiohttp.ClientSession() as http, http.post(url, json=report, headers=headers) as resp:
        assert resp.status < 300, await resp.text()


async def direct_chat_with_service(client: AsyncClient, patient: str) -> str:
    """The doctor accepts the invites waiting for them and reads the report notice for
    ``patient``: the room it is in (the service's direct chat with them)."""
    async def told() -> str | None:
        resp = await client.sync(timeout=1000)
        for room_id in resp.rooms.invite:  # type: ignore[union-attr]
            await client.join(room_id)
        for room_id in client.rooms:
            if any(b.startswith("报告已出 Report ready") and patient in b for b in await bodies(client, room_id)):
                return room_id
        return None

    return await eventually(told)
