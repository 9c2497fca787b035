"""Free loopback ports for the stacks that tests and benchmarks start side by side."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_pair() -> int:
    """A port p with p+1 also free (homeserver and appservice)."""
    for _ in range(50):
        port = free_port()
        if port < 65000:
            try:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free pair of loopback ports")
