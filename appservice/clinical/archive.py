"""The record of a closed case: a FHIR R4 Bundle for the EMR and a PDF for people.

When a case room is closed its discussion leaves Matrix for good, so the archive has to stand on
its own: the Bundle carries every message and file byte-for-byte (the EMR is the system of
record), the PDF is what a clinician or auditor actually reads, with every image drawn and
its fonts embedded. Both are built purely from the values passed in — no clocks, no random
IDs, no network — so archiving the same case twice yields the same Bundle and the same PDF
bytes, and a retried upload cannot create a second, slightly different record.

Neither builder accepts a file without its bytes: the caller (cases.py) refuses to close a
case whose files it could not fetch, rather than file a record that silently lacks them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape

from PIL import Image as PILImage
from PIL import ImageOps
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import cm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Flowable,
    Image,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from appservice.clinical.pdf_fonts import PdfFont, pdf_fonts

MRN_SYSTEM = "urn:carematrix:mrn"
STAFF_SYSTEM = "urn:carematrix:staff"
EVENT_SYSTEM = "urn:matrix:event"
MESSAGE_CATEGORY_SYSTEM = "urn:carematrix:case-message"
KINDS = frozenset({"text", "notice", "image", "file", "decision"})

# Fixed so that fullUrls derived from event IDs never change between releases: an EMR that
# deduplicates on fullUrl must see a re-archived case as the same entries.
_FULLURL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:carematrix:case-archive")

_MAX_IMAGE_WIDTH = 12 * cm
_MAX_IMAGE_HEIGHT = 16 * cm
# Enough pixels for 12 cm at ~300 dpi; originals stay untouched in the Bundle.
_MAX_IMAGE_PIXELS = 1600


@dataclass(frozen=True)
class Attachment:
    """A file as posted: ``data`` is its complete content (empty only for an empty file)."""

    filename: str
    mimetype: str
    data: bytes


@dataclass(frozen=True)
class CaseMessage:
    event_id: str
    sender: str
    sender_name: str
    staff_number: str
    sent: datetime
    kind: str
    body: str
    attachment: Attachment | None = None


@dataclass(frozen=True)
class CaseInfo:
    case_id: str
    patient_id: str
    patient_name: str
    room_id: str
    title: str
    opened_at: datetime
    opened_by: str
    closed_at: datetime
    closed_by: str
    summary: str = ""
    identifier_system: str = "urn:carematrix:case"


# -- FHIR ---------------------------------------------------------------------------------


def entry_full_url(event_id: str) -> str:
    """Derived from the event ID alone, so the same message always lands at the same fullUrl."""
    return f"urn:uuid:{uuid.uuid5(_FULLURL_NAMESPACE, event_id)}"


def _fhir_datetime(value: datetime, what: str) -> str:
    # FHIR requires a zone on any dateTime with a time part; guessing one would shift the record.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value!r}")
    return value.isoformat()


def _subject(case: CaseInfo) -> dict[str, Any]:
    # A logical reference: the hospital's MRN is stable, its FHIR server's resource IDs are not
    # ours to know or to invent.
    return {
        "type": "Patient",
        "identifier": {"system": MRN_SYSTEM, "value": case.patient_id},
        "display": case.patient_name,
    }


def display_name(message: CaseMessage) -> str:
    """The sender as people know them, with the staff number once: callers may pass a name
    that already ends in "(D1001)" (the on-call service's style) or the bare name."""
    who = message.sender_name or message.sender
    number = message.staff_number
    if number and not who.endswith(f"({number})"):
        who = f"{who} ({number})"
    return who


def _sender(message: CaseMessage) -> dict[str, Any]:
    sender: dict[str, Any] = {}
    if message.staff_number:
        sender["type"] = "Practitioner"
        sender["identifier"] = {"system": STAFF_SYSTEM, "value": message.staff_number}
    sender["display"] = display_name(message)
    return sender


def _attachment_payload(att: Attachment, sent: str) -> dict[str, Any]:
    attachment: dict[str, Any] = {"contentType": att.mimetype or "application/octet-stream"}
    # FHIR forbids an empty data string: an empty file is said by its size (0) and hash.
    if att.data:
        attachment["data"] = base64.b64encode(att.data).decode("ascii")
    attachment["title"] = att.filename
    attachment["size"] = len(att.data)
    # R4 Attachment.hash is the base64 of the SHA-1 digest, not hex.
    attachment["hash"] = base64.b64encode(hashlib.sha1(att.data).digest()).decode("ascii")  # noqa: S324
    attachment["creation"] = sent
    return {"contentAttachment": attachment}


def _payload(message: CaseMessage, sent: str) -> list[dict[str, Any]]:
    # FHIR strings may not be empty; a message with no text must still say something.
    text = message.body if message.body.strip() else "(no text)"
    att = message.attachment
    if att is None:
        return [{"contentString": text}]
    payload = [_attachment_payload(att, sent)]
    if message.body.strip() and message.body != att.filename:
        payload.append({"contentString": message.body})
    return payload


def _communication(case: CaseInfo, message: CaseMessage) -> dict[str, Any]:
    if message.kind not in KINDS:
        raise ValueError(f"unknown message kind {message.kind!r} in {message.event_id}")
    sent = _fhir_datetime(message.sent, f"sent of {message.event_id}")
    comm: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": [{"system": EVENT_SYSTEM, "value": message.event_id}],
        "status": "completed",
    }
    if message.kind == "decision":
        comm["category"] = [
            {
                "coding": [
                    {"system": MESSAGE_CATEGORY_SYSTEM, "code": "decision", "display": "Decision"}
                ]
            }
        ]
    comm["subject"] = _subject(case)
    comm["topic"] = {"text": case.title}
    comm["sent"] = sent
    comm["sender"] = _sender(message)
    comm["payload"] = _payload(message, sent)
    return comm


def build_bundle(case: CaseInfo, messages: Sequence[CaseMessage]) -> dict:
    """One Communication per message, in the order given (the room's order, not sorted by
    timestamp, since clocks of federated servers disagree and the room order is what people saw).
    """
    seen: set[str] = set()
    entries: list[dict[str, Any]] = []
    for message in messages:
        if message.event_id in seen:
            # Two entries with one fullUrl make an invalid Bundle; better to fail before upload.
            raise ValueError(f"duplicate event {message.event_id} in case {case.case_id}")
        seen.add(message.event_id)
        entries.append(
            {"fullUrl": entry_full_url(message.event_id), "resource": _communication(case, message)}
        )
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "identifier": {"system": case.identifier_system, "value": case.case_id},
        "type": "collection",
        "timestamp": _fhir_datetime(case.closed_at, "closed_at"),
    }
    if entries:
        bundle["entry"] = entries
    return bundle


# -- PDF ----------------------------------------------------------------------------------


def _styles(font: str) -> dict[str, ParagraphStyle]:
    # One regular face: emphasis comes from size and colour instead of <b>, which would need
    # a bold CJK face that few servers have.
    base = ParagraphStyle("base", fontName=font, fontSize=9.5, leading=13, wordWrap="CJK")
    return {
        "title": ParagraphStyle("title", base, fontSize=16, leading=21, spaceAfter=6),
        "h2": ParagraphStyle(
            "h2", base, fontSize=12.5, leading=17, spaceBefore=10, spaceAfter=4,
            textColor=colors.HexColor("#1f3b63"),
        ),
        "body": base,
        "label": ParagraphStyle("label", base, textColor=colors.HexColor("#555555")),
        "meta": ParagraphStyle(
            "meta", base, fontSize=8.5, leading=11, textColor=colors.HexColor("#555555"),
            spaceBefore=5,
        ),
        "note": ParagraphStyle(
            "note", base, fontSize=8.5, leading=11, textColor=colors.HexColor("#8a1c1c"),
        ),
        "summary": ParagraphStyle("summary", base, fontSize=9, leading=12),
    }


def _fmt_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M")


def _fmt_offset(value: datetime) -> str:
    offset = value.utcoffset()
    if offset is None:
        return ""
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _fmt_zone(value: datetime) -> str:
    """"Asia/Shanghai, UTC+08:00": the zone's name when the time carries one."""
    name = getattr(value.tzinfo, "key", "")
    offset = _fmt_offset(value)
    return f"{name}, {offset}" if name else offset


def _pdf_date(value: datetime) -> str:
    """A PDF date string (D:YYYYMMDDHHmmSS+HH'mm') for the document's own dates."""
    offset = _fmt_offset(value)[3:] or "+00:00"
    return f"D:{value:%Y%m%d%H%M%S}{offset[:3]}'{offset[4:]}'"


_NOTHING_TO_DRAW = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def _font_for(ch: str, fonts: Sequence[PdfFont]) -> str | None:
    if unicodedata.category(ch) in _NOTHING_TO_DRAW:
        return None  # controls, format characters, unassigned: no glyph in any font
    return next((f.name for f in fonts if f.covers(ch)), None)


def _runs(text: str, fonts: Sequence[PdfFont]) -> list[tuple[str, str]]:
    """Split text into (font, text) runs that the PDF can actually show.

    Each character is set in the first embedded font that has a glyph for it (the CJK face,
    then the symbol face). Anything neither has (an emoji used as a thumbs-up to a decision)
    would print as a box, so it becomes its compatibility form (‼ -> !!) or its Unicode name.
    Newlines stay in the text for the caller. The Bundle keeps the original text either way.
    """
    primary = fonts[0].name
    runs: list[tuple[str, str]] = []
    for ch in text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    "):
        piece = ch
        font = primary if ch == "\n" else _font_for(ch, fonts)
        if font is None:
            compat = unicodedata.normalize("NFKC", ch)
            fits = [f.name for f in fonts if all(_font_for(c, [f]) for c in compat)]
            if compat != ch and fits:
                font, piece = fits[0], compat
            else:
                name = unicodedata.name(ch, "")
                font, piece = primary, (f"[{name.lower()}]" if name else f"[U+{ord(ch):04X}]")
        if runs and runs[-1][0] == font:
            runs[-1] = (font, runs[-1][1] + piece)
        else:
            runs.append((font, piece))
    return runs


def _markup(text: str, fonts: Sequence[PdfFont]) -> str:
    """Paragraph text is XML-ish markup; a clinician's "K < 3.5" must not become a tag."""
    # Leading and repeated spaces carry structure in pasted lists and summaries; Paragraph
    # would collapse them, a no-break space (which the embedded fonts draw) is kept.
    text = "\n".join(line.replace("  ", "\u00a0 ") for line in text.split("\n"))
    parts = []
    for font, run in _runs(text, fonts):
        body = "<br/>".join(escape(run).split("\n"))
        parts.append(body if font == fonts[0].name else f'<font face="{font}">{body}</font>')
    return "".join(parts)


def _draw_centred(
    canvas: Canvas, x: float, y: float, text: str, size: float, fonts: Sequence[PdfFont]
) -> None:
    runs = [(font, run.replace("\n", " ")) for font, run in _runs(text, fonts)]
    width = sum(pdfmetrics.stringWidth(run, font, size) for font, run in runs)
    x -= width / 2
    for font, run in runs:
        canvas.setFont(font, size)
        canvas.drawString(x, y, run)
        x += pdfmetrics.stringWidth(run, font, size)


@dataclass(frozen=True)
class _Kit:
    """The fonts and styles of one PDF, so each builder below sets text the same way."""

    fonts: tuple[PdfFont, ...]
    styles: dict[str, ParagraphStyle]

    def para(self, text: str, style: str) -> Paragraph:
        return Paragraph(_markup(text, self.fonts), self.styles[style])


def _fmt_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def _file_line(att: Attachment, note: str, kit: _Kit) -> list[Flowable]:
    kind = att.mimetype or "application/octet-stream"
    digest = hashlib.sha256(att.data).hexdigest()[:16]
    line = f"Attachment: {att.filename} · {kind} · {_fmt_size(len(att.data))} · SHA-256 {digest}…"
    out: list[Flowable] = [kit.para(line, "label")]
    if note:
        out.append(kit.para(note, "note"))
    return out


def _image_flowable(att: Attachment, max_width: float) -> Image | None:
    """None if the bytes are not an image we can draw; the caller then lists it as a file.

    Decoding happens here, with Pillow, rather than inside doc.build(), where one bad upload
    would abort the whole archive.
    """
    try:
        with PILImage.open(io.BytesIO(att.data)) as src:
            if src.format == "JPEG":  # decode phone photos at reduced size: faster, less memory
                src.draft("RGB", (_MAX_IMAGE_PIXELS, _MAX_IMAGE_PIXELS))
            src.load()
            img = ImageOps.exif_transpose(src) or src
            img.thumbnail((_MAX_IMAGE_PIXELS, _MAX_IMAGE_PIXELS))
            has_alpha = img.mode in ("RGBA", "LA", "PA") or (
                img.mode == "P" and "transparency" in img.info
            )
            img = img.convert("RGBA" if has_alpha else "RGB")
            out = io.BytesIO()
            if src.format == "JPEG" and not has_alpha:
                img.save(out, format="JPEG", quality=88)
            else:
                img.save(out, format="PNG")
            px_w, px_h = img.size
    except Exception:  # any decoder failure means "not drawable"
        return None
    if px_w <= 0 or px_h <= 0:
        return None
    scale = min(max_width / px_w, _MAX_IMAGE_HEIGHT / px_h)
    out.seek(0)
    flowable = Image(out, width=px_w * scale, height=px_h * scale)
    flowable.hAlign = "LEFT"
    return flowable


def _attachment_flowables(message: CaseMessage, kit: _Kit, max_width: float) -> list[Flowable]:
    att = message.attachment
    if att is None:
        return []
    if att.data and (att.mimetype.startswith("image/") or message.kind == "image"):
        image = _image_flowable(att, max_width)
        if image is not None:
            return [Spacer(1, 2), image, *_file_line(att, "", kit)]
        return _file_line(att, "Image could not be decoded; original kept in the FHIR archive.", kit)
    return _file_line(att, "", kit)


def _message_block(message: CaseMessage, kit: _Kit, max_width: float) -> list[Flowable]:
    tag = {"decision": " · DECISION", "notice": " · notice"}.get(message.kind, "")
    head = kit.para(f"{_fmt_time(message.sent)}  {display_name(message)}{tag}", "meta")
    body: list[Flowable] = []
    att = message.attachment
    if message.body.strip() and (att is None or message.body != att.filename):
        body.append(kit.para(message.body, "body"))
    body.extend(_attachment_flowables(message, kit, max_width))
    # Keep the name with the first line of what was said; a long body may still split.
    if body:
        return [KeepTogether([head, body[0]]), *body[1:]]
    return [head]


def _header_table(case: CaseInfo, kit: _Kit, width: float) -> Table:
    rows = [
        ("Patient", f"{case.patient_name} · {case.patient_id}"),
        ("Case", case.case_id),
        ("Room", case.room_id),
        ("Opened", f"{_fmt_time(case.opened_at)} by {case.opened_by}"),
        ("Closed", f"{_fmt_time(case.closed_at)} by {case.closed_by}"),
        ("Times", f"local time, {_fmt_zone(case.opened_at)}"),
    ]
    data = [[kit.para(k, "label"), kit.para(v, "body")] for k, v in rows]
    table = Table(data, colWidths=[2.6 * cm, width - 2.6 * cm], hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                # The cells are Paragraphs, but the table still selects its cell font (by
                # default Helvetica, never embedded) before drawing them.
                ("FONT", (0, 0), (-1, -1), kit.fonts[0].name),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, -1), (-1, -1), 0.5, colors.HexColor("#999999")),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                ("TOPPADDING", (0, 0), (-1, -1), 2),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
            ]
        )
    )
    return table


def render_pdf(case: CaseInfo, messages: Sequence[CaseMessage]) -> bytes:
    """A4, decisions before the discussion: whoever opens the archive first wants the outcome.

    Output is byte-stable for the same input (reportlab's invariant mode), matching the Bundle;
    the document's creation and modification dates are the case's close, not reportlab's
    invariant placeholder (2000-01-01) and not the moment of rendering.

    Raises pdf_fonts.FontUnavailable when no CJK font can be embedded.
    """
    fonts = pdf_fonts()
    kit = _Kit(fonts, _styles(fonts[0].name))
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=2 * cm,
        rightMargin=2 * cm,
        topMargin=1.8 * cm,
        bottomMargin=2 * cm,
        title=f"Case {case.case_id}: {case.title}",
        author=case.closed_by,
        subject=f"Case discussion for {case.patient_name} ({case.patient_id})",
        creator="CareMatrix case archive",
        invariant=1,
        # Otherwise every page starts in Helvetica, a font the PDF names but does not embed.
        initialFontName=fonts[0].name,
    )
    width = doc.width
    image_width = min(width, _MAX_IMAGE_WIDTH)

    story: list[Flowable] = [
        kit.para(case.title or f"Case {case.case_id}", "title"),
        _header_table(case, kit, width),
    ]

    if case.summary.strip():
        story.append(kit.para("Patient summary at opening", "h2"))
        for line in case.summary.strip("\n").split("\n"):
            if line.strip():
                story.append(kit.para(line, "summary"))
            else:
                story.append(Spacer(1, 5))

    story.append(kit.para("Decisions", "h2"))
    decisions = [m for m in messages if m.kind == "decision"]
    if not decisions:
        story.append(kit.para("No decisions were recorded in this case.", "body"))
    for message in decisions:
        story.append(kit.para(f"{_fmt_time(message.sent)}  {display_name(message)}", "meta"))
        story.append(kit.para(message.body or "(no text)", "body"))

    story.append(kit.para("Discussion", "h2"))
    if not messages:
        story.append(kit.para("No messages.", "body"))
    for message in messages:
        story.extend(_message_block(message, kit, image_width))

    footer = f"Case {case.case_id} · page "
    closed = _pdf_date(case.closed_at)

    def on_page(canvas: Canvas, document: SimpleDocTemplate) -> None:
        canvas.setDateFormatter(lambda *_: closed)
        canvas.saveState()
        canvas.setFillColor(colors.HexColor("#555555"))
        _draw_centred(canvas, A4[0] / 2, 1.1 * cm, f"{footer}{document.page}", 8, kit.fonts)
        canvas.restoreState()

    doc.build(story, onFirstPage=on_page, onLaterPages=on_page)
    return buf.getvalue()
