"""HL7 intake over MLLP on one CareMatrix stack: how many messages per second are stored
durably and acknowledged (AA), one message in flight per connection, over 1 and 4
connections; ACK latency p50/p99. Delivery into rooms runs behind, as in production."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from bench.mllp import Mllp, start_hl7_stack
from bench.stats import summary
from carematrix_ops.seed import Seeder


def _adt(i: int) -> bytes:
    control = uuid.uuid4().hex[:16]
    return (
        f"MSH|^~\\&|HIS-APP|HIS|CAREMATRIX|RENHE|20261125100000||ADT^A08|{control}|P|2.5|||||CHN|UNICODE UTF-8\r"
        f"PID|1||B{i:06d}^^^RENHE^MR||测试^病人{i}||19700101|M\r"
        "PV1|1|I|ICU^01^01\r"
    ).encode()


async def _client(port: int, count: int, start: int, latencies: list[float]) -> None:
    async with Mllp(port) as conn:
        for i in range(start, start + count):
            t = time.perf_counter()
            await conn.send(_adt(i))
            latencies.append((time.perf_counter() - t) * 1000)


async def measure(work: Path, messages: int = 2000) -> dict:
    d, stack = start_hl7_stack(work)
    port = d.settings.hl7_port
    try:
        Seeder(d).run()
        out = {}
        for connections in (1, 4):
            latencies: list[float] = []
            t0 = time.perf_counter()
            per = messages // connections
            await asyncio.gather(*(_client(port, per, c * per, latencies) for c in range(connections)))
            elapsed = time.perf_counter() - t0
            out[f"{connections}_connections"] = {"messages_per_s": round(len(latencies) / elapsed, 1), "ack": summary(latencies)}
        return out
    finally:
        stack.stop()
