"""The one error type the HL7 adapter raises for bad input, shaped like an ACK's ERR segment.

Every rejection carries an HL7 table 0357 code and a location such as ``PID-3`` so the
sending system's interface analyst sees, in their own engine's ACK viewer, which field of
which segment to fix, without asking us for our logs.
"""

from __future__ import annotations

SEGMENT_SEQUENCE = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
INTERNAL_ERROR = "207"

# Table 0357 wording, sent as ERR-3.2 so receivers that show only the coded element still
# display something a person understands.
TABLE_0357: dict[str, str] = {
    "0": "Message accepted",
    SEGMENT_SEQUENCE: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    INTERNAL_ERROR: "Application internal error",
}


class Hl7Error(Exception):
    """Raised instead of returning partial data: a half-read admission would put a patient
    in the wrong ward room, so the whole message is refused and the sender told why."""

    def __init__(self, code: str, text: str, location: str = "") -> None:
        super().__init__(code, text, location)
        self.code = code
        self.text = text
        self.location = location

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"HL7 error {self.code}{where}: {self.text}"

    @property
    def description(self) -> str:
        """Table 0357 wording for the code; unknown local codes fall back to the code."""
        return TABLE_0357.get(self.code, self.code)
