"""The typed records the appservice routes: who, where, and what happened.

Plain frozen data with no reference back to the message, so records can be queued, logged
and compared in tests without dragging HL7 parsing details along.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

AdtTrigger = Literal["A01", "A02", "A03", "A04", "A08"]
OrderType = Literal["ORM^O01", "OMG^O19"]

# OBX-8 (table 0078) flags that page someone. HH/LL: beyond the panic limits; AA: critically
# abnormal for non-numeric results; "C": the local "critical value" flag several Chinese LIS
# send. "<" and ">" are deliberately absent: they mean "outside the analyser's measuring
# range", which is routine for e.g. a troponin below the detection limit.
CRITICAL_FLAGS = frozenset({"HH", "LL", "AA", "C"})
# Flags shown as abnormal in the ward view. Every critical flag is abnormal too.
ABNORMAL_FLAGS = frozenset({"H", "L", "A", "HH", "LL", "AA"}) | CRITICAL_FLAGS


@dataclass(frozen=True, slots=True)
class Patient:
    id: str
    name: str
    sex: str = ""
    birth_date: date | None = None


@dataclass(frozen=True, slots=True)
class Visit:
    """All fields empty when the message has no PV1 (results and orders may omit it)."""

    ward: str = ""
    room: str = ""
    bed: str = ""
    attending: str = ""
    visit_number: str = ""


@dataclass(frozen=True, slots=True)
class AdtEvent:
    trigger: AdtTrigger
    patient: Patient
    visit: Visit
    prior_ward: str = ""
    event_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    set_id: str
    code: str
    text: str
    value: str
    units: str = ""
    reference_range: str = ""
    flags: tuple[str, ...] = ()
    status: str = ""
    value_type: str = ""

    @property
    def critical(self) -> bool:
        return any(flag in CRITICAL_FLAGS for flag in self.flags)

    @property
    def abnormal(self) -> bool:
        return any(flag in ABNORMAL_FLAGS for flag in self.flags)


@dataclass(frozen=True, slots=True)
class ResultEvent:
    patient: Patient
    visit: Visit
    order_id: str
    test: str
    ordering_provider: str
    observations: tuple[Observation, ...] = field(default=())
    observed_at: datetime | None = None

    @property
    def critical_observations(self) -> tuple[Observation, ...]:
        return tuple(o for o in self.observations if o.critical)


@dataclass(frozen=True, slots=True)
class OrderEvent:
    message_type: OrderType
    order_control: str
    placer: str
    filler: str
    patient: Patient
    visit: Visit
    test: str
    ordering_provider: str
    priority: str = ""
    test_code: str = ""  # the order's code (OBR-4.1, ServiceRequest.code): consult orders by code


@dataclass(frozen=True, slots=True)
class ReportEvent:
    """A diagnostic report is ready (FHIR DiagnosticReport final/amended): the ordering
    physician should hear about it without watching the EMR."""

    patient: Patient
    report_id: str
    title: str
    status: str
    ordering_provider: str  # staff number of the requester, "" when unknown
    conclusion: str = ""
    issued: datetime | None = None
    visit: Visit = field(default_factory=Visit)


@dataclass(frozen=True, slots=True)
class ImagingEvent:
    """A study is available in the PACS (FHIR ImagingStudy): key images can be fetched by
    its Study Instance UID over DICOMweb."""

    patient: Patient
    study_uid: str
    accession: str
    description: str
    modalities: tuple[str, ...] = ()
    started: datetime | None = None
    visit: Visit = field(default_factory=Visit)
