"""Case archive: the FHIR Bundle for the EMR and the PDF for readers.

The Bundle is validated twice, as in test_audit_fhir: fhirclient's R4 models in strict mode
(unknown elements, wrong types, missing required elements) and fhir.resources' R4B pydantic
models (Communication has the same elements in R4 and R4B; these also check primitive formats
such as dateTime and non-empty strings). The PDF is checked as a reader gets it: poppler says
every font is embedded, every character shown has a glyph in the font embedded for it
(tests/pdf_checks.py), and the text, images and dates come out as they went in.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B.bundle import Bundle as R4BBundle
from fhirclient.models.bundle import Bundle as R4Bundle
from PIL import Image as PILImage
from pypdf import PdfReader

from appservice.clinical import pdf_fonts
from appservice.clinical.archive import (
    Attachment,
    CaseInfo,
    CaseMessage,
    build_bundle,
    entry_full_url,
    render_pdf,
)
from tests.pdf_checks import missing_glyphs, pdffonts, pdfimages, pdftotext

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 25, 8, 30, tzinfo=CST)


def png_bytes(size: tuple[int, int] = (640, 360)) -> bytes:
    img = PILImage.new("RGB", size, (240, 240, 240))
    for x in range(0, size[0], 8):  # an ECG-ish trace, so it is not a flat colour
        y = size[1] // 2 + (size[1] // 6 if x % 96 == 0 else 0)
        img.putpixel((x, y), (200, 0, 0))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


PNG = png_bytes()
PDF_FILE = b"%PDF-1.4\n% discharge letter draft\n%%EOF\n"


def case_info(**kw) -> CaseInfo:
    fields = dict(
        case_id="CASE-2026-0042",
        patient_id="P20261101",
        patient_name="王建国",
        room_id="!case42:hospital.example",
        title="急性心梗会诊 / STEMI consult",
        opened_at=T0,
        opened_by="@d1001:hospital.example",
        closed_at=T0 + timedelta(hours=3),
        closed_by="@d1002:hospital.example",
        summary="王建国 · 男 · 1958-03-14\n\nActive problems:\n  - 急性ST段抬高型心肌梗死\n"
        "  - 2型糖尿病\nAllergies: 青霉素 (high)",
    )
    fields.update(kw)
    return CaseInfo(**fields)


def messages() -> list[CaseMessage]:
    def msg(i: int, kind: str, body: str, att: Attachment | None = None, **kw) -> CaseMessage:
        fields = dict(
            event_id=f"$ev{i}:hospital.example",
            sender="@d1001:hospital.example",
            sender_name="张伟",
            staff_number="10234",
            sent=T0 + timedelta(minutes=5 * i),
            kind=kind,
            body=body,
            attachment=att,
        )
        fields.update(kw)
        return CaseMessage(**fields)

    return [
        msg(0, "notice", "Patient summary pinned for P20261101", sender="@carebot:hospital.example",
            sender_name="CareBot", staff_number=""),
        msg(1, "text", "Potassium 6.8 mmol/L, K > 6.5 & rising <urgent>"),
        msg(2, "text", "建议立即复查心电图", sender="@d1002:hospital.example",
            sender_name="李娜", staff_number="10456"),
        msg(3, "image", "ECG strip 08:45", Attachment("ecg.png", "image/png", PNG)),
        msg(4, "file", "letter.pdf", Attachment("letter.pdf", "application/pdf", PDF_FILE)),
        msg(5, "decision", "Start insulin-glucose infusion and calcium gluconate; 转CCU",
            sender="@d1002:hospital.example", sender_name="李娜", staff_number="10456"),
    ]


def assert_r4_valid(bundle: dict) -> None:
    data = json.loads(json.dumps(bundle))  # exactly what the EMR would parse
    R4Bundle(data, strict=True)
    R4BBundle.model_validate(data)


def test_bundle_is_valid_r4_in_both_model_libraries():
    assert_r4_valid(build_bundle(case_info(), messages()))


def test_bundle_header_identifies_the_case():
    bundle = build_bundle(case_info(), messages())
    assert bundle["type"] == "collection"
    assert bundle["identifier"] == {"system": "urn:carematrix:case", "value": "CASE-2026-0042"}
    assert bundle["timestamp"] == "2026-11-25T11:30:00+08:00"
    custom = build_bundle(case_info(identifier_system="urn:oid:1.2.3"), messages())
    assert custom["identifier"]["system"] == "urn:oid:1.2.3"


def test_communications_in_order_with_event_identifiers():
    msgs = messages()
    bundle = build_bundle(case_info(), msgs)
    comms = [e["resource"] for e in bundle["entry"]]
    assert [c["resourceType"] for c in comms] == ["Communication"] * len(msgs)
    assert [c["identifier"] for c in comms] == [
        [{"system": "urn:matrix:event", "value": m.event_id}] for m in msgs
    ]
    assert [e["fullUrl"] for e in bundle["entry"]] == [entry_full_url(m.event_id) for m in msgs]
    assert len({e["fullUrl"] for e in bundle["entry"]}) == len(msgs)
    for comm, m in zip(comms, msgs, strict=True):
        assert comm["status"] == "completed"
        assert comm["sent"] == m.sent.isoformat()
        assert comm["topic"] == {"text": "急性心梗会诊 / STEMI consult"}
        assert comm["subject"]["identifier"] == {
            "system": "urn:carematrix:mrn", "value": "P20261101"
        }
        assert comm["subject"]["display"] == "王建国"
        assert "reference" not in comm["subject"]


def test_sender_identified_by_staff_number_unless_a_bot():
    comms = [e["resource"] for e in build_bundle(case_info(), messages())["entry"]]
    assert comms[0]["sender"] == {"display": "CareBot"}
    assert comms[2]["sender"]["identifier"] == {"system": "urn:carematrix:staff", "value": "10456"}
    assert comms[2]["sender"]["display"] == "李娜 (10456)"


def test_text_payloads_and_decision_category():
    comms = [e["resource"] for e in build_bundle(case_info(), messages())["entry"]]
    assert comms[1]["payload"] == [
        {"contentString": "Potassium 6.8 mmol/L, K > 6.5 & rising <urgent>"}
    ]
    assert "category" not in comms[1]
    assert comms[5]["category"] == [
        {"coding": [{"system": "urn:carematrix:case-message", "code": "decision",
                     "display": "Decision"}]}
    ]
    assert comms[5]["payload"][0]["contentString"].startswith("Start insulin")


def test_attachments_decode_to_the_original_bytes_with_matching_hash():
    comms = [e["resource"] for e in build_bundle(case_info(), messages())["entry"]]
    image, file = comms[3]["payload"], comms[4]["payload"]
    att = image[0]["contentAttachment"]
    assert base64.b64decode(att["data"]) == PNG
    assert att["hash"] == base64.b64encode(hashlib.sha1(PNG).digest()).decode()
    assert att["size"] == len(PNG)
    assert att["contentType"] == "image/png"
    assert att["title"] == "ecg.png"
    assert att["creation"] == comms[3]["sent"]
    assert image[1] == {"contentString": "ECG strip 08:45"}  # caption differs from filename
    assert len(file) == 1  # body is just the filename: no redundant caption
    assert base64.b64decode(file[0]["contentAttachment"]["data"]) == PDF_FILE


def test_same_input_gives_the_same_bundle():
    a = build_bundle(case_info(), messages())
    b = build_bundle(case_info(), copy.deepcopy(messages()))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_empty_body_and_empty_case_still_valid():
    m = CaseMessage("$e:x", "@a:x", "A", "", T0, "text", "")
    bundle = build_bundle(case_info(), [m])
    assert_r4_valid(bundle)
    assert bundle["entry"][0]["resource"]["payload"] == [{"contentString": "(no text)"}]
    empty = build_bundle(case_info(), [])
    assert "entry" not in empty
    R4Bundle(json.loads(json.dumps(empty)), strict=True)
    R4BBundle.model_validate(empty)


def test_naive_times_unknown_kinds_and_duplicate_events_are_refused():
    naive = CaseMessage("$e:x", "@a:x", "A", "", datetime(2026, 1, 1), "text", "hi")
    with pytest.raises(ValueError, match="timezone"):
        build_bundle(case_info(), [naive])
    odd = CaseMessage("$e:x", "@a:x", "A", "", T0, "sticker", "hi")
    with pytest.raises(ValueError, match="kind"):
        build_bundle(case_info(), [odd])
    dup = messages()[1]
    with pytest.raises(ValueError, match="duplicate"):
        build_bundle(case_info(), [dup, dup])


# -- PDF ----------------------------------------------------------------------------------


def pdf_text(data: bytes) -> tuple[PdfReader, str]:
    reader = PdfReader(io.BytesIO(data))
    return reader, "\n".join(page.extract_text() for page in reader.pages)


def image_xobjects(reader: PdfReader) -> list:
    found = []
    for page in reader.pages:
        xobjects = page["/Resources"].get("/XObject")
        if xobjects is None:
            continue
        for ref in xobjects.get_object().values():
            obj = ref.get_object()
            if obj.get("/Subtype") == "/Image":
                found.append(obj)
    return found


def test_pdf_contains_header_decision_discussion_and_chinese_text():
    data = render_pdf(case_info(), messages())
    reader, text = pdf_text(data)
    assert len(reader.pages) >= 1
    assert "P20261101" in text
    assert "Start insulin-glucose infusion" in text
    assert "Potassium 6.8 mmol/L, K > 6.5 & rising <urgent>" in text  # escaped, not markup
    assert "王建国" in text
    assert "李娜" in text
    assert "建议立即复查心电图" in text
    assert "Decisions" in text and "Discussion" in text
    assert "letter.pdf" in text and "application/pdf" in text
    assert hashlib.sha256(PDF_FILE).hexdigest()[:16] in text
    assert "2026-11-25 08:30" in text  # local time as given, not converted to UTC
    assert "Case CASE-2026-0042 · page 1" in text


def test_decisions_come_before_the_discussion():
    _, text = pdf_text(render_pdf(case_info(), messages()))
    decisions = text.index("Decisions")
    assert decisions < text.index("Start insulin") < text.index("Discussion")
    assert text.index("Discussion") < text.index("建议立即复查心电图")


def test_pdf_metadata():
    reader = PdfReader(io.BytesIO(render_pdf(case_info(), messages())))
    assert reader.metadata.title == "Case CASE-2026-0042: 急性心梗会诊 / STEMI consult"
    assert reader.metadata.author == "@d1002:hospital.example"


def test_pdf_embeds_the_png_scaled_to_fit():
    reader = PdfReader(io.BytesIO(render_pdf(case_info(), messages())))
    images = image_xobjects(reader)
    assert len(images) == 1
    assert (images[0]["/Width"], images[0]["/Height"]) == (640, 360)


def test_large_image_is_downscaled_and_fits_the_page():
    big = Attachment("photo.png", "image/png", png_bytes((4000, 3000)))
    msg = CaseMessage("$big:x", "@a:x", "A", "1", T0, "image", "wound photo", big)
    reader = PdfReader(io.BytesIO(render_pdf(case_info(), [msg])))
    (image,) = image_xobjects(reader)
    assert max(image["/Width"], image["/Height"]) <= 1600


def test_corrupt_image_is_listed_as_a_file_and_does_not_crash():
    broken = Attachment("broken.png", "image/png", PNG[:40])
    msg = CaseMessage("$bad:x", "@a:x", "A", "1", T0, "image", "broken.png", broken)
    reader, text = pdf_text(render_pdf(case_info(), [msg]))
    assert image_xobjects(reader) == []
    assert "broken.png" in text
    assert "could not be decoded" in text
    assert_r4_valid(build_bundle(case_info(), [msg]))


def test_long_discussion_spans_pages_with_numbered_footers():
    long = [
        CaseMessage(f"$m{i}:x", "@a:x", "王医生", "1", T0 + timedelta(minutes=i), "text",
                    "患者情况稳定，继续观察。" * 12)
        for i in range(80)
    ]
    reader, text = pdf_text(render_pdf(case_info(summary=""), long))
    assert len(reader.pages) > 2
    assert f"page {len(reader.pages)}" in text
    assert "No decisions were recorded" in text


def test_same_input_gives_the_same_pdf_bytes():
    assert render_pdf(case_info(), messages()) == render_pdf(case_info(), messages())


def test_an_empty_file_is_recorded_as_empty_not_as_missing():
    empty = Attachment("note.txt", "text/plain", b"")
    msg = CaseMessage("$empty:x", "@a:x", "A", "1", T0, "file", "note.txt", empty)
    bundle = build_bundle(case_info(), [msg])
    assert_r4_valid(bundle)
    att = bundle["entry"][0]["resource"]["payload"][0]["contentAttachment"]
    assert att["title"] == "note.txt" and "data" not in att  # FHIR forbids an empty data string
    assert att["size"] == 0
    assert att["hash"] == base64.b64encode(hashlib.sha1(b"").digest()).decode()
    _, text = pdf_text(render_pdf(case_info(), [msg]))
    assert "note.txt · text/plain · 0 B" in text and "not available" not in text


def test_characters_outside_the_cjk_font_stay_readable():
    body = "同意 👍 K⁺ 5.9 µmol ‼ ✓"
    msg = CaseMessage("$u:x", "@a:x", "Jürgen Weiß", "1", T0, "text", body)
    assert build_bundle(case_info(), [msg])["entry"][0]["resource"]["payload"] == [
        {"contentString": body}  # the record keeps the original
    ]
    data = render_pdf(case_info(), [msg])
    text = pdftotext(data)
    assert "Jürgen Weiß" in text and "µmol" in text
    assert "K⁺" in text and "‼" in text and "✓" in text  # drawn from the symbol font
    assert "[thumbs up sign]" in text  # no embedded font has it: named, not a box
    assert missing_glyphs(data) == set()


# -- what a reader of the PDF sees ----------------------------------------------------------


def test_every_font_is_embedded_as_a_subset():
    data = render_pdf(case_info(), messages())
    fonts = pdffonts(data)
    assert fonts, "no fonts listed"
    assert all(f["emb"] == "yes" and f["sub"] == "yes" and f["uni"] == "yes" for f in fonts), fonts
    assert any("ZenHei" in f["name"] or "CJK" in f["name"] for f in fonts), fonts


def test_every_character_shown_has_a_glyph_in_its_embedded_font():
    # "·" separators and the no-break spaces of indented summary lines were boxes before.
    summary = "王建国 · 男 · 1958-03-14\n  - 急性ST段抬高型心肌梗死\n    • K 6.8 ↑ ≥ 6.5 ±0.1 °C –—…"
    data = render_pdf(case_info(summary=summary), messages())
    assert missing_glyphs(data) == set()
    text = pdftotext(data)
    for expected in ("王建国 · 男 · 1958-03-14", "急性ST段抬高型心肌梗死", "• K 6.8 ↑ ≥ 6.5 ±0.1 °C –—…",
                     "建议立即复查心电图", "转CCU", "Case CASE-2026-0042 · page 1"):
        assert expected in text, expected


def test_posted_image_is_drawn():
    images = pdfimages(render_pdf(case_info(), messages()))
    assert [(i["width"], i["height"]) for i in images] == [("640", "360")]


def test_sender_name_and_staff_number_appear_once():
    styled = CaseMessage("$n:x", "@d1001:x", "李伟 Li Wei (D1001)", "D1001", T0, "text", "ok")
    bare = CaseMessage("$b:x", "@d1002:x", "王芳", "D1002", T0, "text", "ok")
    data = render_pdf(case_info(), [styled, bare])
    text = pdftotext(data)
    assert "李伟 Li Wei (D1001)" in text and "(D1001) (D1001)" not in text
    assert "王芳 (D1002)" in text and "(D1002) (D1002)" not in text
    comms = [e["resource"] for e in build_bundle(case_info(), [styled, bare])["entry"]]
    assert [c["sender"]["display"] for c in comms] == ["李伟 Li Wei (D1001)", "王芳 (D1002)"]


def test_pdf_dates_are_the_case_close_in_the_hospital_zone():
    zone = ZoneInfo("Asia/Shanghai")
    opened = datetime(2026, 11, 25, 8, 30, tzinfo=zone)
    case = case_info(opened_at=opened, closed_at=opened + timedelta(hours=3, minutes=5))
    data = render_pdf(case, messages())
    meta = PdfReader(io.BytesIO(data)).metadata
    assert meta["/CreationDate"] == meta["/ModDate"] == "D:20261125113500+08'00'"
    assert meta.creation_date == case.closed_at
    text = pdftotext(data)
    assert "2026-11-25 11:35 by @d1002" in text
    assert "local time, Asia/Shanghai, UTC+08:00" in text


def test_no_embeddable_cjk_font_is_refused_not_rendered_as_boxes(monkeypatch: pytest.MonkeyPatch):
    pdf_fonts.pdf_fonts.cache_clear()
    monkeypatch.setattr(pdf_fonts, "cjk_font_files", lambda: ())
    try:
        with pytest.raises(pdf_fonts.FontUnavailable, match="fonts-wqy-zenhei"):
            render_pdf(case_info(), messages())
    finally:
        pdf_fonts.pdf_fonts.cache_clear()


def test_jpeg_photo_is_embedded_upright():
    from tests.images import photo

    src = PILImage.open(io.BytesIO(photo(3, (1200, 900))))
    exif = src.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display, as phones write it
    out = io.BytesIO()
    src.save(out, "JPEG", exif=exif.tobytes())
    att = Attachment("wound.jpg", "image/jpeg", out.getvalue())
    msg = CaseMessage("$jpg:x", "@a:x", "A", "1", T0, "image", "wound day 3", att)
    (image,) = image_xobjects(PdfReader(io.BytesIO(render_pdf(case_info(), [msg]))))
    assert "/DCTDecode" in image["/Filter"]  # stays a JPEG, not re-encoded losslessly
    assert image["/Width"] < image["/Height"]  # portrait, as the phone showed it
