"""The MLLP listener over a real loopback socket, with the service's intake replaced by
recorders: what the HIS's engine reads back when it sends too much or stops mid-frame."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appservice.clinical.mllp_listener import MllpLimits, MllpListener
from appservice.config import AppserviceConfig, _hl7
from bridges.hl7.ack import ack
from bridges.hl7.errors import Hl7Error
from bridges.hl7.message import Message
from bridges.hl7.mllp import MllpDecoder, frame
from bridges.hl7.parse import parse
from carematrix_ops.cli import build_parser
from carematrix_ops.cli.up_settings import up_settings
from carematrix_ops.deploy.prepare import prepare
from tests.ports import free_port_pair
from tests.support import eventually

MSH = "MSH|^~\\&|HIS|RENHE|CAREMATRIX|RENHE|20261125100000||ADT^A01|{control}|P|2.5|||||CHN|UNICODE UTF-8\r"


class Intake:
    """Stands in for ClinicalService.receive/_reject and keeps what they were given."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.rejected: list[tuple[str | None, bytes, str]] = []

    async def receive(self, payload: bytes, peer: str) -> bytes:
        self.received.append(payload)
        return ack(parse(payload), "AA")

    async def reject(self, message: Message | None, payload: bytes, peer: str, code: str, error: Hl7Error) -> bytes:
        self.rejected.append((message.control_id if message else None, payload, error.text))
        return ack(message, code, error.text, error)  # type: ignore[arg-type]


@pytest.fixture
async def listener() -> AsyncIterator[tuple[Intake, int]]:
    intake = Intake()
    server = await MllpListener(intake.receive, intake.reject, MllpLimits(2048, 0.5)).serve("127.0.0.1", 0)
    try:
        yield intake, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def read_ack(reader: asyncio.StreamReader, decoder: MllpDecoder) -> Message:
    while not (frames := decoder.feed(await asyncio.wait_for(reader.read(65536), 10))):
        pass
    return parse(frames[0])


async def test_oversize_message_gets_ar_naming_the_limit_and_the_connection_stays_open(listener):
    intake, port = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder = MllpDecoder()
    try:
        big = (MSH.format(control="BIG1") + "NTE|1||" + "x" * 5000 + "\r").encode()
        # Sent in pieces, as a slow engine would: the answer comes once the end block is in.
        wire = frame(big)
        for i in range(0, len(wire), 1000):
            writer.write(wire[i:i + 1000])
            await writer.drain()
        refused = await read_ack(reader, decoder)
        assert refused.get("MSA", 1) == "AR" and refused.get("MSA", 2) == "BIG1"
        assert "message exceeds the 2 KiB limit" in refused.raw_text
        assert intake.rejected[0][0] == "BIG1" and len(intake.rejected[0][1]) <= 2048

        normal = MSH.format(control="OK1").encode()
        writer.write(frame(normal))
        await writer.drain()
        accepted = await read_ack(reader, decoder)
        assert accepted.get("MSA", 1) == "AA" and accepted.get("MSA", 2) == "OK1"
        assert intake.received == [normal]
    finally:
        writer.close()


async def test_oversize_message_whose_header_is_not_readable_is_refused_without_a_control_id(listener):
    intake, port = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(frame(b"z" * 3000))
        await writer.drain()
        refused = await read_ack(reader, MllpDecoder())
        assert refused.get("MSA", 1) == "AR" and refused.get("MSA", 2) == ""
        assert intake.rejected[0][0] is None
    finally:
        writer.close()


async def test_half_frame_is_dead_lettered_and_closed_but_an_idle_connection_is_not(listener):
    intake, port = listener
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\x0b" + MSH.format(control="HALF").encode() + b"PID|1||")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(65536), 10) == b""  # closed, no ACK
        (control, partial, text), = intake.rejected
        assert control == "HALF" and partial.endswith(b"PID|1||")
        assert text.startswith("frame not finished within 0.5 s")
        # The connection that sat idle between messages all along still works.
        idle_writer.write(frame(MSH.format(control="LATER").encode()))
        await idle_writer.drain()
        assert (await read_ack(idle_reader, MllpDecoder())).get("MSA", 1) == "AA"
    finally:
        writer.close()
        idle_writer.close()


async def test_peer_closing_mid_frame_is_dead_lettered(listener):
    intake, port = listener
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x0b" + MSH.format(control="GONE").encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    (control, _, text), = await eventually(lambda: intake.rejected, interval=0.05)
    assert control == "GONE" and text.startswith("connection closed in the middle of a frame")


def test_limits_go_from_the_command_line_into_the_appservice(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CAREMATRIX_HL7_MAX_MESSAGE_BYTES", "4096")
    monkeypatch.delenv("CAREMATRIX_HL7_FRAME_TIMEOUT", raising=False)
    args = ["up", "--data-dir", str(tmp_path / "var"), "--port", str(free_port_pair()), "--hl7-frame-timeout", "7.5"]
    deployment = prepare(up_settings(build_parser().parse_args(args)))
    config = AppserviceConfig.load(deployment.paths.appservice_config)
    assert config.mllp_limits == MllpLimits(4096, 7.5)
    assert MllpLimits() == MllpLimits(1 << 20, 30.0)  # what a deployment without the flags gets


@pytest.mark.parametrize("section", [{"max_message_bytes": 10}, {"frame_timeout_seconds": 0}, {"frame_timeout_seconds": "soon"}])
def test_a_bad_limit_in_the_appservice_config_is_refused_by_name(section: dict):
    with pytest.raises(ValueError, match=f"hl7.{next(iter(section))}"):
        _hl7(section)
