"""Phones are rung through Synapse's HTTP pushers and the hospital's push gateway (Matrix Push
Gateway API). Synapse refuses outbound requests to private and loopback addresses
(``ip_range_blacklist``), which is where a hospital's gateway lives; the deployment opens
exactly the gateway's address (``ip_range_whitelist``) and nothing else. Every push leaves
message content out (``push.include_content: false``): a notification carries who, where and
how urgent, never clinical text (docs/mobile.md says what remains and why).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.settings import Settings

NOTIFY_PATH = "/_matrix/push/v1/notify"


def gateway_addresses(url: str) -> list[str]:
    """The gateway's addresses as Synapse will reach them (a host name is resolved now, at
    ``up``; re-run ``up`` if it moves)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeployError(f"--push-gateway must be an http(s) URL such as http://10.20.0.5:5000{NOTIFY_PATH}, got {url!r}")
    if parts.path.rstrip("/") not in ("", NOTIFY_PATH):
        raise DeployError(f"--push-gateway {url}: the Push Gateway API's path is {NOTIFY_PATH}")
    try:
        return [str(ipaddress.ip_address(parts.hostname))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise DeployError(f"--push-gateway {url}: cannot resolve {parts.hostname} ({exc})") from exc
    return sorted({str(info[4][0]) for info in infos})


def notify_url(url: str) -> str:
    """The URL phones register their pushers with."""
    parts = urlsplit(url)
    return url if parts.path.rstrip("/") == NOTIFY_PATH else url.rstrip("/") + NOTIFY_PATH


def homeserver_values(settings: Settings) -> dict[str, Any]:
    allow: list[str] = []
    if settings.push_gateway:
        for address in gateway_addresses(settings.push_gateway):
            ip = ipaddress.ip_address(address)
            allow.append(f"{address}/{32 if ip.version == 4 else 128}")
    return {"ip_range_whitelist": allow, "push": {"include_content": False}}
