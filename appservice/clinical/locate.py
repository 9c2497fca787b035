"""Which ward a patient is on, for anything that must reach the patient's ward team: a case
room's on-duty roles, a critical result whose message does not say where the patient lies.

Two sources, in order:

1. ADT: the ward the last admission/transfer placed the patient on (the clinical store's
   patient registry). A discharge clears it.
2. The hospital's FHIR server, when ADT knows nothing: the patient's ``in-progress``
   Encounter, its current location read the way ADT reads PV1-3 (bridges.fhir.events), i.e.
   the location's identifier, else its ``Location/<id>``. A Location referenced by an opaque
   id is read to find its identifier.

Only wards the clinical policy lists (``clinical.wards``) count: a location the policy does
not route is no answer. The patient is named by the ID clinicians use (the MRN); the FHIR
server is asked for the Patient with that identifier first, since its resource id may differ.

Interface (kept small on purpose; both case rooms and critical-result routing use it)::

    locator = PatientLocator(store, holder, fetch)
    located = await locator.ward_of("P20261101")  # Located | None, may raise LocateFailed
    located.ward    # "5A": a key of clinical.wards
    located.source  # "ADT" or "FHIR Encounter/enc-1101-2"
    located.how     # "from the last ADT message" / "from the EMR's current encounter"
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp

from appservice.clinical.store import ClinicalStore
from bridges.fhir.events import extract_resource
from bridges.fhir.outcome import FhirInvalid
from bridges.records import AdtEvent
from carematrix.policy.holder import PolicyHolder

log = logging.getLogger("carematrix.appservice.locate")

ADT = "ADT"
FHIR_PREFIX = "FHIR "
# Medical record numbers: our own system, or any identifier typed MR (as the summary reads them).
MRN_SYSTEM = "urn:carematrix:mrn"
FETCH_TIMEOUT_SECONDS = 10.0

# "Type/id" or "Type?query" -> the resource or search Bundle; raises on HTTP errors
# (appservice.main._fhir_reader: RuntimeError naming the HTTP status).
Fetch = Callable[[str], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Located:
    """Where the patient is and how that was found out (shown to people, so they can judge it)."""

    ward: str  # a ward code of the clinical policy (a key of ``clinical.wards``)
    source: str  # "ADT" or "FHIR Encounter/<id>"

    @property
    def how(self) -> str:
        if self.source == ADT:
            return "from the last ADT message"
        return "from the EMR's current encounter"


class LocateFailed(Exception):
    """ADT knows nothing and the FHIR server could not be asked or gave an unusable answer.
    The message is fit to show in a room. ``transient``: asking again later may work (a
    network failure, a timeout, HTTP 5xx), unlike a refusal or data that will not change."""

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


class PatientLocator:
    def __init__(self, store: ClinicalStore, holder: PolicyHolder, fetch: Fetch | None,
                 timeout: float = FETCH_TIMEOUT_SECONDS) -> None:
        self.store = store
        self.holder = holder
        self.fetch = fetch  # None: no FHIR server is connected, ADT is the only source
        self.timeout = timeout

    async def ward_of(self, patient_id: str) -> Located | None:
        """The patient's ward, or None when neither ADT nor the FHIR server places the
        patient on a ward the policy lists. Raises LocateFailed only when ADT knows nothing
        and the FHIR server could not be asked; never for a patient who is simply not in."""
        wards = self._wards()
        known = await self.store.patient(patient_id) or {}
        if known.get("ward") in wards:
            return Located(str(known["ward"]), ADT)
        if self.fetch is None:
            return None
        return await self._from_encounter(patient_id, wards)

    def _wards(self) -> Mapping[str, Any]:
        clinical = self.holder.current.clinical
        return clinical.wards if clinical is not None else {}

    async def _from_encounter(self, patient_id: str, wards: Mapping[str, Any]) -> Located | None:
        fhir_id = await self._fhir_id(patient_id)
        bundle = await self._get("Encounter?" + urlencode({"patient": fhir_id, "status": "in-progress"}))
        encounters = [e for e in _resources(bundle, "Encounter") if e.get("status") == "in-progress"]
        # The latest stay first: an old encounter left in progress by mistake must not win.
        encounters.sort(key=lambda e: str((e.get("period") or {}).get("start") or ""), reverse=True)
        for encounter in encounters:
            ward = await self._ward_of_encounter(encounter, wards)
            if ward:
                return Located(ward, f"{FHIR_PREFIX}Encounter/{encounter.get('id')}")
        log.info("patient %s: no in-progress Encounter on a ward of the policy (%d in progress)",
                 patient_id, len(encounters))
        return None

    async def _fhir_id(self, patient_id: str) -> str:
        """The FHIR server's id of the patient with this MRN; the ID itself when no Patient
        carries it as an identifier (it is then taken to be the server's own id)."""
        bundle = await self._get("Patient?" + urlencode({"identifier": patient_id}))
        found = {str(p.get("id")): p for p in _resources(bundle, "Patient") if p.get("id")}
        if len(found) > 1:
            by_mrn = [pid for pid, p in found.items() if _has_mrn(p, patient_id)]
            if len(by_mrn) != 1:
                raise LocateFailed(f"{len(found)} patients on the FHIR server match {patient_id}; "
                                   "refusing to guess which one", transient=False)
            return by_mrn[0]
        return next(iter(found), patient_id)

    async def _ward_of_encounter(self, encounter: dict[str, Any], wards: Mapping[str, Any]) -> str | None:
        ward = _encounter_ward(encounter, {})
        if ward in wards:
            return ward
        # An opaque Location id ("Location/8812"): its identifier may be the ward code.
        included: dict[str, dict[str, Any]] = {}
        for entry in encounter.get("location") or []:
            reference = str(((entry or {}).get("location") or {}).get("reference") or "")
            if reference.startswith("Location/"):
                try:
                    included[reference] = await self._get(reference)
                except LocateFailed as exc:
                    log.info("Encounter/%s: %s not read: %s", encounter.get("id"), reference, exc)
        ward = _encounter_ward(encounter, included) if included else None
        return ward if ward in wards else None

    async def _get(self, reference: str) -> dict[str, Any]:
        assert self.fetch is not None
        try:
            return await asyncio.wait_for(self.fetch(reference), self.timeout)
        except TimeoutError as exc:
            raise LocateFailed(f"the FHIR server did not answer within {self.timeout:g} s", transient=True) from exc
        except aiohttp.ClientError as exc:
            raise LocateFailed(f"cannot reach the FHIR server ({type(exc).__name__})", transient=True) from exc
        except (RuntimeError, ValueError) as exc:
            # _fhir_reader names the status: "FHIR server answered HTTP 503 for …".
            text = str(exc)
            raise LocateFailed(text, transient=" HTTP 5" in text) from exc


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    return [e["resource"] for e in entries or [] if isinstance(e, dict) and isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") == kind]


def _has_mrn(patient: dict[str, Any], value: str) -> bool:
    for identifier in patient.get("identifier") or []:
        codes = {c.get("code") for c in ((identifier.get("type") or {}).get("coding") or [])}
        if identifier.get("value") == value and (identifier.get("system") == MRN_SYSTEM or "MR" in codes):
            return True
    return False


def _encounter_ward(encounter: dict[str, Any], included: Mapping[str, dict[str, Any]]) -> str | None:
    """The current ward as the FHIR intake reads it for an admission; None if it names none."""
    try:
        event = extract_resource(encounter, included)
    except FhirInvalid:
        return None
    return (event.visit.ward or None) if isinstance(event, AdtEvent) else None
