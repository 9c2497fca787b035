"""HL7 v2 inbound adapter: MLLP frames in, typed ADT/result/order records and ACKs out.

Pure functions over bytes and plain data; the appservice owns the TCP listener and feeds it
through ``MllpDecoder``, then ``parse`` -> ``extract`` -> route, answering every frame with
``ack``. Rejections are ``Hl7Error``s carrying the table 0357 code and location that go into
the ACK's ERR segment, so the sender learns exactly which field to fix.
"""

from __future__ import annotations

from bridges.hl7.ack import ack
from bridges.hl7.errors import Hl7Error
from bridges.hl7.events import extract
from bridges.hl7.message import Message, Segment
from bridges.hl7.mllp import Frame, MllpDecoder, MllpError, frame
from bridges.hl7.parse import parse, parse_header
from bridges.records import (
    ABNORMAL_FLAGS,
    CRITICAL_FLAGS,
    AdtEvent,
    Observation,
    OrderEvent,
    Patient,
    ResultEvent,
    Visit,
)

__all__ = [
    "ABNORMAL_FLAGS",
    "CRITICAL_FLAGS",
    "AdtEvent",
    "Frame",
    "Hl7Error",
    "Message",
    "MllpDecoder",
    "MllpError",
    "Observation",
    "OrderEvent",
    "Patient",
    "ResultEvent",
    "Segment",
    "Visit",
    "ack",
    "extract",
    "frame",
    "parse",
    "parse_header",
]
