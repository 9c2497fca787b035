"""HL7 escape sequences: how delimiters and raw bytes travel inside field values.

Splitting happens before unescaping, so an escaped ``\\S\\`` inside a name never becomes a
component boundary. Formatting commands (``\\H\\``, ``\\.sp\\``...) are display hints for
printers; we keep the text and drop the hint, except ``\\.br\\``, which becomes a line break
because dropping it would glue two lines of a lab comment together.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridges.hl7.errors import DATA_TYPE_ERROR, Hl7Error


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The five encoding characters from MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it is written on the wire."""
        return self.component + self.repetition + self.escape + self.subcomponent


STANDARD = Delimiters()


def unescape(text: str, delimiters: Delimiters, encoding: str, location: str = "") -> str:
    """A malformed or unknown escape is kept literally rather than refused: a stray
    backslash in free text (a Windows path in a comment) should not bounce an admission.
    Only a ``\\X..\\`` hex escape that does not decode is an error, because there the
    sender clearly meant bytes and we cannot tell which characters they were."""
    esc = delimiters.escape
    if esc not in text:
        return text
    out: list[str] = []
    position = 0
    while True:
        start = text.find(esc, position)
        if start < 0:
            out.append(text[position:])
            break
        end = text.find(esc, start + 1)
        if end < 0:
            out.append(text[position:])
            break
        out.append(text[position:start])
        code = text[start + 1 : end]
        replacement = _sequence(code, delimiters, encoding, location)
        if replacement is None:
            out.append(text[start:end])
            position = end  # the closing escape may open the next sequence
        else:
            out.append(replacement)
            position = end + 1
    return "".join(out)


def _sequence(code: str, delimiters: Delimiters, encoding: str, location: str) -> str | None:
    simple = {
        "F": delimiters.field,
        "S": delimiters.component,
        "T": delimiters.subcomponent,
        "R": delimiters.repetition,
        "E": delimiters.escape,
        "H": "",
        "N": "",
        ".br": "\n",
    }
    if code in simple:
        return simple[code]
    if code[:1] == "X" and len(code) > 1:
        return _hex(code[1:], encoding, location)
    if code[:1] in ("C", "M", "Z") and len(code) > 1:
        return ""  # charset switches and local escapes: no portable meaning
    if code[:1] == "." and len(code) > 1:
        return ""  # other formatted-text commands (.sp, .in, .ti, .sk, .ce, .fi, .nf)
    return None


def _hex(digits: str, encoding: str, location: str) -> str:
    try:
        return bytes.fromhex(digits).decode(encoding)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise Hl7Error(
            DATA_TYPE_ERROR, f"escape \\X{digits}\\ is not valid {encoding} hex", location
        ) from exc


def escape(text: str, delimiters: Delimiters = STANDARD) -> str:
    """Line breaks are escaped as hex too: a raw CR inside a value would end the segment."""
    esc = delimiters.escape
    if not any(c in text for c in (esc, delimiters.field, delimiters.component,
                                    delimiters.repetition, delimiters.subcomponent, "\r", "\n")):
        return text
    table = {
        esc: f"{esc}E{esc}",
        delimiters.field: f"{esc}F{esc}",
        delimiters.component: f"{esc}S{esc}",
        delimiters.subcomponent: f"{esc}T{esc}",
        delimiters.repetition: f"{esc}R{esc}",
        "\r": f"{esc}X0D{esc}",
        "\n": f"{esc}X0A{esc}",
    }
    return "".join(table.get(c, c) for c in text)
