"""A parsed message to the record the hospital routes on, or an ``Hl7Error`` saying why not.

Only the fields a ward, a lab alert or an order list needs are read, and the ones routing
depends on are required: a result without a patient id cannot reach the right room, so it
is refused (and the sender told) rather than posted half-empty.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from bridges.hl7.errors import (
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE,
    UNSUPPORTED_MESSAGE_TYPE,
    Hl7Error,
)
from bridges.hl7.message import Message, Segment
from bridges.hl7.timestamps import parse_date, parse_dtm
from bridges.records import (
    ABNORMAL_FLAGS,
    CRITICAL_FLAGS,
    AdtEvent,
    AdtTrigger,
    Observation,
    OrderEvent,
    OrderType,
    Patient,
    ResultEvent,
    Visit,
)

__all__ = [
    "ABNORMAL_FLAGS",
    "CRITICAL_FLAGS",
    "AdtEvent",
    "Observation",
    "OrderEvent",
    "Patient",
    "ResultEvent",
    "Visit",
    "extract",
]

Event = AdtEvent | ResultEvent | OrderEvent
# OBX-11 statuses for which an empty OBX-5 is the message: the test was cancelled, deleted
# or is still running.
_NO_VALUE_STATUSES = frozenset({"X", "D", "I"})
_CODED_TYPES = frozenset({"CE", "CWE", "CNE"})
_WARD_REQUIRED = frozenset({"A01", "A02", "A04"})


def extract(message: Message) -> Event:
    handler = _HANDLERS.get(message.message_type)
    if handler is None:
        raise Hl7Error(
            UNSUPPORTED_MESSAGE_TYPE,
            f"message type {message.message_type!r} is not accepted "
            f"(accepted: {', '.join(sorted(_HANDLERS))})",
            "MSH-9",
        )
    return handler(message)


def _adt(message: Message) -> AdtEvent:
    trigger = cast(AdtTrigger, message.trigger)
    patient = _patient(message)
    pv1 = message.segment("PV1")
    if trigger in _WARD_REQUIRED:
        if pv1 is None:
            raise Hl7Error(SEGMENT_SEQUENCE, f"ADT^{trigger} needs a PV1 segment", "PV1")
        _require(pv1, 3, f"ADT^{trigger} needs the patient's ward")
    evn_time = message.get("EVN", 2)
    event_time = (parse_dtm(evn_time, "EVN-2") if evn_time
                  else parse_dtm(message.msh(7), "MSH-7"))
    return AdtEvent(
        trigger=trigger,
        patient=patient,
        visit=_visit(pv1),
        prior_ward=pv1.get(6) if pv1 is not None and trigger == "A02" else "",
        event_time=event_time,
    )


def _result(message: Message) -> ResultEvent:
    patient = _patient(message)
    obr = message.segment("OBR")
    if obr is None:
        raise Hl7Error(SEGMENT_SEQUENCE, "ORU^R01 needs an OBR segment", "OBR")
    observations = tuple(_observation(obx) for obx in message.all("OBX"))
    observed_at = parse_dtm(obr.get(7), "OBR-7")
    if observed_at is None:
        observed_at = parse_dtm(message.get("OBX", 14), "OBX-14")
    return ResultEvent(
        patient=patient,
        visit=_visit(message.segment("PV1")),
        order_id=obr.get(2) or obr.get(3),
        test=obr.get(4, 2) or obr.get(4, 1),
        # OBR-16, or ORC-12 when the lab sends the order segment (the doctor to page when
        # no ward is known for the patient).
        ordering_provider=obr.get(16) or (orc.get(12) if (orc := message.segment("ORC")) is not None else ""),
        observations=observations,
        observed_at=observed_at,
    )


def _order(message: Message) -> OrderEvent:
    patient = _patient(message)
    orc = message.segment("ORC")
    if orc is None:
        raise Hl7Error(SEGMENT_SEQUENCE, f"{message.message_type} needs an ORC segment", "ORC")
    order_control = _require(orc, 1, "the order control code says what to do with the order")
    obr = message.segment("OBR") or Segment("OBR", ("OBR",), message.delimiters, message.encoding)
    return OrderEvent(
        message_type=cast(OrderType, message.message_type),
        order_control=order_control,
        placer=orc.get(2) or obr.get(2),
        filler=orc.get(3) or obr.get(3),
        patient=patient,
        visit=_visit(message.segment("PV1")),
        test=obr.get(4, 2) or obr.get(4, 1),
        ordering_provider=orc.get(12) or obr.get(16),
        # ORC-7/OBR-27 (TQ) until v2.4; TQ1-9 from v2.5, where the TQ fields are withdrawn.
        priority=orc.get(7, 6) or obr.get(27, 6) or message.get("TQ1", 9),
        test_code=obr.get(4, 1),
    )


_HANDLERS: dict[str, Callable[[Message], Event]] = {
    **{f"ADT^{trigger}": _adt for trigger in ("A01", "A02", "A03", "A04", "A08")},
    "ORU^R01": _result,
    "ORM^O01": _order,
    "OMG^O19": _order,
}


def _require(segment: Segment, field: int, why: str) -> str:
    value = segment.get(field)
    if not value:
        location = f"{segment.name}-{field}"
        raise Hl7Error(REQUIRED_FIELD_MISSING, f"{location} is empty: {why}", location)
    return value


def _patient(message: Message) -> Patient:
    pid = message.segment("PID")
    if pid is None:
        raise Hl7Error(SEGMENT_SEQUENCE, f"{message.message_type} needs a PID segment", "PID")
    return Patient(
        id=_patient_id(pid),
        name=_name(pid),
        sex=pid.get(8),
        birth_date=parse_date(pid.get(7), "PID-7"),
    )


def _patient_id(pid: Segment) -> str:
    """The medical record number when PID-3 lists several identifiers (national id card,
    insurance number, MRN): the MRN is what the hospital's rooms are keyed on."""
    count = pid.repetitions(3)
    for repetition in range(1, count + 1):
        if pid.get(3, 5, repetition) == "MR" and pid.get(3, 1, repetition):
            return pid.get(3, 1, repetition)
    first = pid.get(3, 1)
    if not first:
        raise Hl7Error(REQUIRED_FIELD_MISSING, "PID-3 has no patient identifier", "PID-3")
    return first


def _name(pid: Segment) -> str:
    """Chinese names are family name then given name with no space (王建国); other names
    read the Western way, given before family."""
    family, given, middle = pid.get(5, 1), pid.get(5, 2), pid.get(5, 3)
    if _is_cjk(family + given):
        return family + given
    return " ".join(part for part in (given, middle, family) if part)


def _is_cjk(text: str) -> bool:
    return any(
        "\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff" or "\U00020000" <= c <= "\U0003ffff"
        for c in text
    )


def _visit(pv1: Segment | None) -> Visit:
    if pv1 is None:
        return Visit()
    return Visit(
        ward=pv1.get(3, 1),
        room=pv1.get(3, 2),
        bed=pv1.get(3, 3),
        attending=pv1.get(7),
        visit_number=pv1.get(19),
    )


def _observation(obx: Segment) -> Observation:
    code = obx.get(3)
    if not code:
        raise Hl7Error(
            REQUIRED_FIELD_MISSING, f"OBX {obx.get(1) or '?'} has no observation code", "OBX-3"
        )
    value_type = obx.get(2)
    status = obx.get(11)
    value = _value(obx, value_type)
    if not value and status not in _NO_VALUE_STATUSES:
        raise Hl7Error(
            REQUIRED_FIELD_MISSING, f"OBX {obx.get(1) or '?'} ({code}) has no value", "OBX-5"
        )
    flags = tuple(
        flag
        for flag in (obx.get(8, 1, r).strip().upper() for r in range(1, obx.repetitions(8) + 1))
        if flag
    )
    return Observation(
        set_id=obx.get(1),
        code=code,
        text=obx.get(3, 2),
        value=value,
        units=obx.get(6),
        reference_range=obx.get(7),
        flags=flags,
        status=status,
        value_type=value_type,
    )


def _value(obx: Segment, value_type: str) -> str:
    """Coded results read as their text (``阳性`` rather than ``POS``); structured numerics
    (``<^5``, ``^10^-^20``) as one string (``<5``, ``10-20``); repeated text lines joined by
    line breaks. In text values a bare ``^`` or ``&`` is kept as written, since senders that
    forget to escape them still meant the character, not a component."""
    d = obx.delimiters
    lines = []
    for repetition in obx.value(5):
        components = [d.subcomponent.join(sub) for sub in repetition]
        if value_type in _CODED_TYPES:
            lines.append(components[1] if len(components) > 1 and components[1]
                         else components[0])
        elif value_type == "SN":
            lines.append("".join(components))
        else:
            lines.append(d.component.join(components))
    return "\n".join(lines)
