"""Free loopback ports for the stacks that tests and benchmarks start side by side.

A port is chosen below the kernel's ephemeral range (``ip_local_port_range``), never inside it:
a port the kernel handed out for ``bind(0)`` is free only at that moment, and between the
choice and the process that listens on it, any outgoing connection on the machine (Synapse to
PostgreSQL, a client to Redis) may be given the same number as its source port. That happened:
a whole suite's PostgreSQL stack failed with "address already in use" on its appservice port.
Below the range only another listener can take a port, and that is checked by binding it."""

from __future__ import annotations

import functools
import os
import random
import socket
from contextlib import ExitStack
from pathlib import Path

_LOWEST = 10000
# Where tests pick from when the ephemeral range leaves no room below or above it.
_FALLBACK_LOW = 20000
_RANDOM = random.SystemRandom()


@functools.cache
def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _candidate_range() -> tuple[int, int]:
    """Ports [low, high) outside the ephemeral range: below it, or above it if it starts low."""
    low, high = _ephemeral_range()
    if low - _LOWEST >= 2000:
        return _LOWEST, low
    if 65000 - high >= 2000:
        return high + 1, 65000
    return _FALLBACK_LOW, 65000


def free_port() -> int:
    return free_port_run(1)


def free_port_pair() -> int:
    """A port p with p+1 also free (homeserver and appservice)."""
    return free_port_run(2)


def free_port_run(count: int) -> int:
    """A port p with p+1 … p+count-1 also free: the homeserver, the appservice and, in demo
    mode, the demo EMR and PACS take consecutive ports by default."""
    low, high = _candidate_range()
    for _ in range(200):
        port = _RANDOM.randrange(low, high - count)
        try:
            with ExitStack() as held:
                for offset in range(count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free loopback ports in {low}–{high}")


# The PostgreSQL server tests and benchmarks use; the path part is replaced by each database's
# name.
TEST_SERVER_URL = os.environ.get("CAREMATRIX_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/")
