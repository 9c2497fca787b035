"""Original-mode acknowledgements: the reply an HL7 sender waits for before sending more.

The ACK goes back in the sender's own character set and version, and echoes its control id,
so the sender's engine can match it and show our error (code, text and location) in its
own queue viewer. Delimiters are always the standard ``|^~\\&``.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Literal

from bridges.hl7.errors import Hl7Error
from bridges.hl7.escape import STANDARD, escape
from bridges.hl7.message import FieldValue, Message
from bridges.hl7.timestamps import format_dtm

AckCode = Literal["AA", "AE", "AR"]
DEFAULT_VERSION = "2.5"
_LOCATION = re.compile(r"([A-Z][A-Z0-9]{2})(?:-(\d+))?")


def ack(
    message: Message | None,
    code: AckCode,
    text: str = "",
    error: Hl7Error | None = None,
    *,
    sending_app: str = "CAREMATRIX",
    sending_facility: str = "",
    now: datetime | None = None,
    control_id: str | None = None,
) -> bytes:
    """``message`` is None when the payload was not HL7 at all; the AR then has an empty
    MSA-2. Prefer ``parse_header(payload)`` over None when parsing failed past the MSH, so
    the control id is still echoed. MSA-3 defaults to the error's text. ``now`` and
    ``control_id`` exist for reproducible tests; characters the sender's charset cannot
    hold (Chinese text in an 8859/1 ACK) become ``?``."""
    if code not in ("AA", "AE", "AR"):
        raise ValueError(f"ACK code must be AA, AE or AR, not {code!r}")
    moment = now if now is not None else datetime.now().astimezone()
    inbound = _Inbound(message)
    msh = [
        "MSH",
        STANDARD.encoding_characters,
        escape(sending_app),
        escape(sending_facility),
        inbound.app,
        inbound.facility,
        format_dtm(moment),
        "",
        f"ACK^{escape(inbound.trigger)}^ACK" if inbound.trigger else "ACK",
        escape(control_id if control_id is not None else _new_control_id(moment)),
        inbound.processing_id,
        inbound.version,
        "", "", "", "", "",
        inbound.charset,
    ]
    segments = [
        STANDARD.field.join(msh).rstrip(STANDARD.field),
        STANDARD.field.join(
            ("MSA", code, escape(inbound.control_id), escape(text or (error.text if error else "")))
        ).rstrip(STANDARD.field),
    ]
    if error is not None:
        segments.append(_err(error, inbound.version))
    return ("\r".join(segments) + "\r").encode(inbound.encoding, errors="replace")


class _Inbound:
    """What the ACK echoes from the message it answers, already escaped for our delimiters."""

    def __init__(self, message: Message | None) -> None:
        self.app = self.facility = self.trigger = self.control_id = self.charset = ""
        self.processing_id = "P"
        self.version = DEFAULT_VERSION
        self.encoding = "utf-8"
        if message is None:
            return
        msh = message.segments[0]
        self.app = _encode(msh.value(3))
        self.facility = _encode(msh.value(4))
        self.trigger = message.trigger
        self.control_id = message.control_id
        # A test-system message (T) must get a test-system answer, or it lands in production.
        self.processing_id = escape(message.processing_id) or "P"
        self.version = escape(message.version) or DEFAULT_VERSION
        self.charset = escape(message.charset)
        self.encoding = message.encoding


def _encode(value: FieldValue) -> str:
    d = STANDARD
    return d.repetition.join(
        d.component.join(d.subcomponent.join(escape(sub) for sub in component)
                         for component in repetition)
        for repetition in value
    )


def _new_control_id(moment: datetime) -> str:
    """20 characters, the MSH-10 limit before v2.7: a timestamp for the log reader plus
    randomness so two ACKs in the same second differ."""
    return f"{moment:%Y%m%d%H%M%S}{secrets.randbelow(10**6):06d}"


def _err(error: Hl7Error, version: str) -> str:
    match = _LOCATION.fullmatch(error.location)
    segment, field = (match.group(1), match.group(2) or "") if match else ("", "")
    location = f"{segment}^^{field}" if field else segment
    coded = f"{escape(error.code)}^{escape(error.description)}^HL70357"
    # Receivers on v2.4 and earlier know only ERR-1; v2.5 moved the content to ERR-2..ERR-4.
    legacy = ""
    if _older_than_2_5(version):
        legacy = (f"{location}^{escape(error.code)}&{escape(error.description)}&HL70357"
                  if field else f"{location}^^^{escape(error.code)}&"
                  f"{escape(error.description)}&HL70357")
    fields = ["ERR", legacy, location, coded, "E", "", "", escape(error.text)]
    return STANDARD.field.join(fields).rstrip(STANDARD.field)


def _older_than_2_5(version: str) -> bool:
    parts = re.findall(r"\d+", version)
    return len(parts) >= 2 and (int(parts[0]), int(parts[1])) < (2, 5)
