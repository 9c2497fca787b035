"""Where a clinical event goes when the message alone does not say: the routing decision as a
pure function over what the appservice found out about the patient.

A critical result must reach a human even for a patient the messenger knows nothing about
(no ADT yet, an encounter it never saw, a ward code missing from the policy). The responsible
ward is the first of these that names a ward in the policy: the message's own location, the
patient's last ward from ADT, the patient's current encounter in the EMR. With no ward, a
paging rule pages the ordering doctor first and then the sending source's safety-net role; a
rule that only posts has nowhere to post and is reported as undeliverable.
"""

from __future__ import annotations

from dataclasses import dataclass

from carematrix.policy.clinical import ClinicalPolicy, Rule, Ward


@dataclass(frozen=True)
class WardClue:
    """A ward code and where it came from, in words for the people told about the routing."""

    code: str | None
    source: str  # "the message (PV1-3)", "the last ADT", "the EMR's current encounter"


@dataclass(frozen=True)
class Route:
    ward: Ward | None
    how: str  # a sentence for the alert state, the integration room and the audit trail
    lead: str | None = None  # staff number paged before the safety net (the ordering doctor)
    safety_net: str | None = None  # on-call role paged when no ward is known
    deliverable: bool = True  # False: nobody to post to or page; report it

    @property
    def fallback(self) -> bool:
        return self.ward is None and self.deliverable


def route(
    policy: ClinicalPolicy, source: str, rules: list[Rule], clues: list[WardClue], ordering_staff: str | None
) -> Route:
    """The route for an event with ``rules``; ``clues`` in the order they are trusted;
    ``ordering_staff`` is the ordering doctor's staff number when they are on the staff list."""
    unknown: list[str] = []
    for clue in clues:
        if not clue.code:
            continue
        ward = policy.wards.get(clue.code)
        if ward is not None:
            return Route(ward, f"ward {ward.code} from {clue.source}")
        unknown.append(f"ward '{clue.code}' from {clue.source} is not in the clinical policy")
    why = "; ".join(unknown) or "no ward known"
    if not any(r.page for r in rules):
        return Route(None, f"{why}: nowhere to post", deliverable=False)
    net = policy.safety_net_for(source)
    if ordering_staff and net:
        return Route(None, f"{why} — paged the ordering doctor, then {net}", ordering_staff, net)
    if net:
        return Route(None, f"{why} and no ordering doctor on the staff list — paged {net}", None, net)
    return Route(None, f"{why}, no ordering doctor and no safety net for '{source}'", deliverable=False)
