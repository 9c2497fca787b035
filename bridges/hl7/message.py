"""A parsed HL7 v2 message as plain immutable data, addressed the way HL7 documents do.

Segments keep their fields as received (still escaped) and split components only when
asked. Most messages are read for a dozen values, so decoding every subcomponent of every
Z-segment up front would be wasted work on the interface engine's hot path.

Numbering follows the standard, 1-based: ``MSH-1`` is the field separator itself and
``MSH-2`` the encoding characters, so ``MSH-9`` means the same here as in the vendor's
interface specification. Absent values read as ``""``, as HL7 makes no difference between a
field that is empty and one that is not sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridges.hl7.escape import Delimiters, unescape

# (repetitions of (components of (subcomponents)))), decoded: one field's full structure.
FieldValue = tuple[tuple[tuple[str, ...], ...], ...]


@dataclass(frozen=True, slots=True)
class Segment:
    """``fields[n]`` is field n; ``fields[0]`` is the segment name."""

    name: str
    fields: tuple[str, ...]
    delimiters: Delimiters
    encoding: str

    def raw(self, field: int) -> str:
        """The field as written on the wire, escapes and delimiters included."""
        return self.fields[field] if 0 < field < len(self.fields) else ""

    def _literal(self, field: int) -> bool:
        # MSH-1 and MSH-2 *are* the delimiters, so splitting them would be meaningless.
        return self.name == "MSH" and field <= 2

    def repetitions(self, field: int) -> int:
        text = self.raw(field)
        if not text or self._literal(field):
            return 1 if text else 0
        return text.count(self.delimiters.repetition) + 1

    def get(self, field: int, component: int = 1, repetition: int = 1,
            subcomponent: int = 1) -> str:
        text = self.raw(field)
        if not text:
            return ""
        if self._literal(field):
            return text
        d = self.delimiters
        text = _nth(text, d.repetition, repetition)
        text = _nth(text, d.component, component)
        text = _nth(text, d.subcomponent, subcomponent)
        return unescape(text, d, self.encoding, f"{self.name}-{field}")

    def value(self, field: int) -> FieldValue:
        """The whole field decoded, for copying it into another message (the ACK echoes
        the sender's application and facility, which may be multi-component HD values)."""
        text = self.raw(field)
        if not text:
            return ()
        location = f"{self.name}-{field}"
        if self._literal(field):
            return (((text,),),)
        d = self.delimiters
        return tuple(
            tuple(
                tuple(unescape(sub, d, self.encoding, location)
                      for sub in component.split(d.subcomponent))
                for component in repetition.split(d.component)
            )
            for repetition in text.split(d.repetition)
        )


def _nth(text: str, separator: str, index: int) -> str:
    if index < 1:
        raise ValueError("HL7 positions are 1-based")
    if separator not in text:
        return text if index == 1 else ""
    parts = text.split(separator, index)
    return parts[index - 1] if index <= len(parts) else ""


@dataclass(frozen=True, slots=True)
class Message:
    """``raw_text`` is the decoded text exactly as received, kept for the audit trail."""

    raw_text: str
    segments: tuple[Segment, ...]
    delimiters: Delimiters
    encoding: str

    def all(self, seg: str) -> list[Segment]:
        return [s for s in self.segments if s.name == seg]

    def segment(self, seg: str, occurrence: int = 1) -> Segment | None:
        """The occurrence-th segment with that name, counted from 1."""
        seen = 0
        for s in self.segments:
            if s.name == seg:
                seen += 1
                if seen == occurrence:
                    return s
        return None

    def get(self, seg: str, field: int, component: int = 1, repetition: int = 1,
            occurrence: int = 1, subcomponent: int = 1) -> str:
        found = self.segment(seg, occurrence)
        return found.get(field, component, repetition, subcomponent) if found else ""

    def msh(self, field: int, component: int = 1) -> str:
        """One component of an MSH field (the first unless asked); MSH-1 and MSH-2 whole."""
        return self.segments[0].get(field, component)

    @property
    def message_type(self) -> str:
        """``ADT^A01``: MSH-9.1^MSH-9.2, without the message structure in MSH-9.3."""
        trigger = self.trigger
        return f"{self.msh(9)}^{trigger}" if trigger else self.msh(9)

    @property
    def trigger(self) -> str:
        return self.msh(9, 2)

    @property
    def control_id(self) -> str:
        return self.msh(10)

    @property
    def sending_app(self) -> str:
        return self.msh(3)

    @property
    def sending_facility(self) -> str:
        return self.msh(4)

    @property
    def receiving_app(self) -> str:
        return self.msh(5)

    @property
    def receiving_facility(self) -> str:
        return self.msh(6)

    @property
    def processing_id(self) -> str:
        return self.msh(11)

    @property
    def version(self) -> str:
        return self.msh(12)

    @property
    def charset(self) -> str:
        """MSH-18 as sent (``""`` when absent); ``encoding`` is the codec it maps to."""
        return self.segments[0].get(18)
