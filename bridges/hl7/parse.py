"""Bytes of one HL7 v2 message (an MLLP payload) to a ``Message``.

The character set is named inside the message (MSH-18), so the header is read as bytes
first; only then can the rest be decoded. Problems raise ``Hl7Error`` with the code and
location an ACK needs; nothing is guessed, because a wrongly decoded name is worse than a
rejected message the sender can resend.
"""

from __future__ import annotations

import re

from bridges.hl7.charset import ASCII_UNSAFE, codec_for
from bridges.hl7.errors import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE,
    TABLE_VALUE_NOT_FOUND,
    Hl7Error,
)
from bridges.hl7.escape import Delimiters
from bridges.hl7.message import Message, Segment

__all__ = ["Hl7Error", "Message", "Segment", "parse", "parse_header"]

_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")
_BOM = b"\xef\xbb\xbf"
MSH_18 = 17  # index of MSH-18 after splitting the MSH line on the field separator


def parse(payload: bytes, *, default_charset: str = "") -> Message:
    """``default_charset`` stands in for an absent MSH-18: many older Chinese HIS send GBK
    text without declaring it, and the interface owner knows this per sender."""
    data = _trimmed(payload)
    header, delimiters = _header(data)
    codec = _declared_codec(header, delimiters, default_charset)
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        before = data[: exc.start].replace(b"\r\n", b"\r").replace(b"\n", b"\r")
        line = before.count(b"\r") + 1
        raise Hl7Error(
            DATA_TYPE_ERROR,
            f"bytes at offset {exc.start} (around segment {line}) are not valid {codec}",
            "MSH-18",
        ) from exc
    segments = _segments(text, delimiters, codec)
    message = Message(text, segments, delimiters, codec)
    for field in (9, 10):
        if not message.msh(field):
            raise Hl7Error(REQUIRED_FIELD_MISSING, f"MSH-{field} is empty", f"MSH-{field}")
    return message


def parse_header(payload: bytes, *, default_charset: str = "") -> Message | None:
    """Just the MSH segment, for acknowledging a message ``parse`` refused: the ACK must
    echo the control id, or the sender cannot match it and keeps resending. Undecodable
    characters become U+FFFD here; the control id and version are ASCII in practice.
    None when there is no usable MSH at all."""
    try:
        header, delimiters = _header(_trimmed(payload))
    except Hl7Error:
        return None
    try:
        codec = _declared_codec(header, delimiters, default_charset)
    except Hl7Error:
        codec = "ascii"
    text = header.decode(codec, errors="replace")
    return Message(text, (_segment(text, delimiters, codec),), delimiters, codec)


def _trimmed(payload: bytes) -> bytes:
    """Without a UTF-8 byte-order mark (Windows engines add one, and in a GB18030 message
    it would decode as two Chinese characters in front of MSH) or leading blank lines."""
    return payload.removeprefix(_BOM).lstrip(b"\r\n")


def _header(data: bytes) -> tuple[bytes, Delimiters]:
    """The MSH line, undecoded, and the delimiters it declares."""
    if not data.startswith(b"MSH"):
        raise Hl7Error(SEGMENT_SEQUENCE, "message does not start with an MSH segment", "MSH")
    cut = min((i for i in (data.find(b"\r"), data.find(b"\n")) if i >= 0), default=len(data))
    header = data[:cut]
    field = header[3:4]
    if not field or not _is_delimiter(field):
        raise Hl7Error(DATA_TYPE_ERROR, "MSH-1 is not a valid field separator", "MSH-1")
    end = header.find(field, 4)
    encoding = header[4:] if end < 0 else header[4:end]
    if not encoding:
        raise Hl7Error(REQUIRED_FIELD_MISSING, "MSH-2 encoding characters are empty", "MSH-2")
    # v2.7 adds a fifth, truncation character; we read past it but use the first four.
    chars = encoding[:4]
    if (len(encoding) not in (4, 5) or not all(_is_delimiter(chars[i:i + 1]) for i in range(4))
            or len(set(chars + field)) != 5):
        raise Hl7Error(
            DATA_TYPE_ERROR,
            f"MSH-2 must be four distinct delimiter characters like ^~\\&, got "
            f"{encoding.decode('latin-1')!r}",
            "MSH-2",
        )
    component, repetition, escape, subcomponent = tuple(chars.decode("ascii"))
    return header, Delimiters(field.decode("ascii"), component, repetition, escape, subcomponent)


def _is_delimiter(char: bytes) -> bool:
    return len(char) == 1 and 0x21 <= char[0] <= 0x7E and not char.isalnum()


def _declared_codec(header: bytes, delimiters: Delimiters, default_charset: str) -> str:
    """MSH-18 read from undecoded bytes. For GB18030 and Big5 a Chinese character in
    MSH-3..17 can contain a byte equal to '|', which would shift the field count; so a
    candidate codec is accepted only if decoding the header with it names that same codec."""
    declared = _charset_field(header.decode("latin-1"), delimiters)
    guess = codec_for(declared or default_charset)
    candidates = ([guess] if guess else []) + [c for c in ASCII_UNSAFE if c != guess]
    for codec in candidates:
        try:
            decoded = header.decode(codec)
        except UnicodeDecodeError:
            continue
        if codec_for(_charset_field(decoded, delimiters) or default_charset) == codec:
            return codec
    if guess is None:
        raise Hl7Error(
            TABLE_VALUE_NOT_FOUND,
            f"character set {declared or default_charset!r} is not supported",
            "MSH-18",
        )
    raise Hl7Error(DATA_TYPE_ERROR, f"MSH segment is not valid {guess}", "MSH-18")


def _charset_field(header: str, delimiters: Delimiters) -> str:
    fields = header.split(delimiters.field)
    if len(fields) <= MSH_18:
        return ""
    value = fields[MSH_18].split(delimiters.repetition)[0]
    return value.split(delimiters.component)[0].strip()


def _segments(text: str, delimiters: Delimiters, codec: str) -> tuple[Segment, ...]:
    lines = text.replace("\r\n", "\r").replace("\n", "\r").split("\r")
    segments = tuple(_segment(line, delimiters, codec) for line in lines if line.strip())
    for index, segment in enumerate(segments[1:], start=2):
        if segment.name == "MSH":
            raise Hl7Error(
                SEGMENT_SEQUENCE, f"second MSH at segment {index}: one message per frame", "MSH"
            )
    return segments


def _segment(line: str, delimiters: Delimiters, codec: str) -> Segment:
    name = line[:3]
    if not _SEGMENT_NAME.fullmatch(name) or (len(line) > 3 and line[3] != delimiters.field):
        raise Hl7Error(SEGMENT_SEQUENCE, f"not a segment: {line[:20]!r}")
    parts = line.split(delimiters.field)
    if name == "MSH":
        fields = ("MSH", delimiters.field, *parts[1:])
    else:
        fields = tuple(parts)
    return Segment(name, fields, delimiters, codec)
