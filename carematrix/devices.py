"""Nurse-call presses as pure decisions: whether a press is a new call or a repeat of the
device's last one, what its page says, and how a device is told where its call stands.

A patient presses the bed button three times because nobody came: that is one call, not three
pages (and three escalations) for the same nurse. A press that asks for more — emergency after
assist, a code after an emergency — is a new call at once, whatever the window.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

from carematrix.policy.devices import CALL_KINDS, Device

# Rank of each kind: a press of a higher rank than the open call is not a repeat.
RANK = {kind: i for i, kind in enumerate(CALL_KINDS)}
KIND_WORDS = {
    "assist": "呼叫 Assistance",
    "emergency": "紧急呼叫 Emergency",
    "code": "抢救 Code",
}


@dataclass(frozen=True)
class LastCall:
    call_id: str
    kind: str
    last_press: datetime
    # Acknowledged, or never paged (the homeserver was down): the next press is a new call.
    closed: bool


def is_repeat(last: LastCall | None, kind: str, now: datetime, window_seconds: int) -> bool:
    """A press is the same call as the device's last one when that call is still open, asked
    for as much or more, and was last pressed within the window."""
    if last is None or last.closed:
        return False
    if RANK[kind] > RANK[last.kind]:
        return False
    # A press "before" the last one happens only when a drill moves the clock back: new call.
    return 0 <= (now - last.last_press).total_seconds() <= window_seconds


def token_matches(given: str, expected_sha256: str | None) -> bool:
    """The device's bearer token against the SHA-256 the deployment keeps; compared in
    constant time."""
    if not expected_sha256 or not given:
        return False
    digest = hashlib.sha256(given.encode()).hexdigest()
    return hmac.compare_digest(digest, expected_sha256)


def call_text(device: Device, kind: str) -> str:
    """The first line of the page: what and where."""
    return f"🔔 {KIND_WORDS[kind]} · {device.label} (device {device.id})"


def gap_text(role_name: str, fallback: list[str]) -> str:
    """What a device shows (and the record says) when a press found nobody on duty for a role:
    who the fallback paged instead, or that nobody could be paged. Chinese first."""
    if fallback:
        names = ", ".join(fallback)
        return (f"排班空缺：{role_name} 无人值班，已呼叫后备人员 {names}。 "
                f"Roster gap: nobody on duty as {role_name}; the fallback was paged: {names}.")
    return (f"排班空缺：{role_name} 无人值班，后备人员也无人可呼叫，请电话联系。 "
            f"Roster gap: nobody on duty as {role_name} and nobody in the fallback either; call by phone.")
