"""The on-call part of the hospital policy (``oncall:`` in policies/*.yaml): role addresses,
their escalation chains, fallback pools, roster feeds and quiet hours."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from carematrix.identity import ROLE_PREFIX
from carematrix.oncall.escalation import EscalationPolicy

ROLE_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,40}/[a-z][a-z0-9-]{0,40}$")
FEED_KINDS = ("ical", "csv", "fhir")
QUIET_MODES = ("opt_in", "everyone", "off")
HANDOVER_MODES = ("release", "stay")


def role_localpart(role_id: str) -> str:
    """``cardiology/attending`` → ``role-cardiology-attending`` (user and alias localpart)."""
    return ROLE_PREFIX + role_id.replace("/", "-")


@dataclass(frozen=True)
class RoleAddress:
    id: str
    unit: str
    name: str  # display name of the role account, e.g. "心内科 · 主班医生 (值班)"
    escalation: EscalationPolicy
    handover: str = "release"

    @property
    def localpart(self) -> str:
        return role_localpart(self.id)


@dataclass(frozen=True)
class FeedSpec:
    id: str
    kind: str
    path: str | None  # relative to the policy directory
    url: str | None
    refresh_seconds: int
    roles: dict[str, str]  # feed label -> role ID
    staff: dict[str, str] | None  # feed person id -> staff number
    columns: dict[str, str] = field(default_factory=dict)  # CSV only
    role_from: str = "summary"  # iCal only
    encoding: str = "utf-8"


@dataclass(frozen=True)
class OncallPolicy:
    timezone: str
    roles: dict[str, RoleAddress]
    pools: dict[str, tuple[str, ...]]
    feeds: tuple[FeedSpec, ...]
    quiet_hours: str = "opt_in"
    overrides_by: frozenset[str] = frozenset()  # staff roles allowed to swap / cover
    admin_room: str | None = None  # alias localpart told about feed problems

    def role_for_localpart(self, localpart: str) -> RoleAddress | None:
        for role in self.roles.values():
            if role.localpart == localpart:
                return role
        return None
