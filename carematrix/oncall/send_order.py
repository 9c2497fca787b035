"""The order in which the page outbox sends: critical pages before urgent ones before
routine ones, and within one page in the order its sends were decided.

After an outage, or under a backlog (a clock move that made many pages due at once, a burst
of pages while the homeserver was slow), sending strictly in the order decided would leave a
critical laboratory result waiting behind every routine page queued before it. So the outbox
sends the most urgent page first. A page is as urgent as the highest priority it has come
to: its own (a critical result's page is critical from the start) or that of any send of it
still waiting (an escalation step the policy marks critical, a roster-gap notice to the
sender). All sends of one page share that rank, so a page's notice never overtakes the
invite before it, nor an acknowledgement notice the page it acknowledges; pages of the same
rank keep their order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from carematrix.oncall.escalation import PRIORITIES

T = TypeVar("T")


@dataclass(frozen=True)
class Queued(Generic[T]):
    """One send waiting in the outbox: its key (the outbox ID, in the order decided), its
    page and that page's own priority, the send's priority, and what the caller keeps with it."""

    key: str
    page_id: str
    page_priority: str
    priority: str
    item: T


def rank(priority: str) -> int:
    """Higher is more urgent; an unknown priority counts as urgent (the default of a page)."""
    return PRIORITIES.index(priority) if priority in PRIORITIES else PRIORITIES.index("urgent")


def page_ranks(queued: Iterable[Queued[T]]) -> dict[str, int]:
    """Each page's rank: the highest of its own priority and its waiting sends'."""
    ranks: dict[str, int] = {}
    for q in queued:
        ranks[q.page_id] = max(ranks.get(q.page_id, -1), rank(q.page_priority), rank(q.priority))
    return ranks


def send_order(queued: Sequence[Queued[T]]) -> list[tuple[int, Queued[T]]]:
    """The waiting sends in the order to send them, each with its page's rank."""
    ranks = page_ranks(queued)
    ordered = sorted(queued, key=lambda q: (-ranks[q.page_id], q.key))
    return [(ranks[q.page_id], q) for q in ordered]
