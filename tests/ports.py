"""Free loopback ports for the stacks that tests and benchmarks start side by side."""

from __future__ import annotations

import os
import socket
from contextlib import ExitStack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_pair() -> int:
    """A port p with p+1 also free (homeserver and appservice)."""
    return free_port_run(2)


def free_port_run(count: int) -> int:
    """A port p with p+1 … p+count-1 also free: the homeserver, the appservice and, in demo
    mode, the demo EMR and PACS take consecutive ports by default."""
    for _ in range(50):
        port = free_port()
        if port >= 65000:
            continue
        try:
            with ExitStack() as held:
                for offset in range(1, count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free loopback ports")


# The PostgreSQL server tests and benchmarks use; the path part is replaced by each database's
# name.
TEST_SERVER_URL = os.environ.get("CAREMATRIX_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/")
