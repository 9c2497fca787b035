"""What a reader of a generated PDF would get, checked with the tools a reader has: poppler's
pdffonts, pdfimages and pdftotext (Debian package poppler-utils, installed by .ci/services) and
the embedded fonts themselves, read with fontTools.

A PDF can name a character (its /ToUnicode map, so text extraction looks right) and still
draw it as an empty box when the font it embeds has no glyph for it; ``missing_glyphs`` checks
the glyphs, not the text.
"""

from __future__ import annotations

import io
import re
import subprocess
import tempfile
import unicodedata
from pathlib import Path

from fontTools.ttLib import TTFont
from pypdf import PdfReader


def _poppler(tool: str, pdf: bytes, *args: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "doc.pdf"
        path.write_bytes(pdf)
        done = subprocess.run([tool, *args, str(path), *(["-"] if tool == "pdftotext" else [])],
                              capture_output=True, text=True, check=True, timeout=60)
        return done.stdout


def _table(output: str) -> list[list[str]]:
    """Rows of a poppler listing (a header, a dashed rule, then one row per line)."""
    lines = output.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    return [line.split() for line in lines[rule + 1:] if line.strip()]


def pdffonts(pdf: bytes) -> list[dict[str, str]]:
    """One dict per font: name, type, emb, sub, uni (as pdffonts prints them)."""
    fonts = []
    for row in _table(_poppler("pdffonts", pdf)):
        # name, type (may be two words: "Type 1", "CID TrueType"), encoding, emb, sub, uni, id, gen
        emb, sub, uni = row[-5:-2]
        fonts.append({"name": row[0], "type": " ".join(row[1:-6]), "emb": emb, "sub": sub, "uni": uni})
    return fonts


def pdfimages(pdf: bytes) -> list[dict[str, str]]:
    """One dict per drawn image: page, type, width, height, color."""
    return [
        {"page": row[0], "type": row[2], "width": row[3], "height": row[4], "color": row[5]}
        for row in _table(_poppler("pdfimages", pdf, "-list"))
    ]


def pdftotext(pdf: bytes) -> str:
    return _poppler("pdftotext", pdf, "-enc", "UTF-8")


def _hex_text(value: str) -> str:
    data = bytes.fromhex(value)
    return data.decode("utf-16-be") if len(data) % 2 == 0 and len(data) > 1 else data.decode("latin-1")


def _to_unicode(cmap: bytes) -> dict[int, str]:
    """Code -> text from a /ToUnicode CMap (bfchar and bfrange sections)."""
    text = cmap.decode("latin-1")
    out: dict[int, str] = {}
    for section in re.findall(r"beginbfchar(.*?)endbfchar", text, re.S):
        for code, uni in re.findall(r"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", section):
            out[int(code, 16)] = _hex_text(uni)
    for section in re.findall(r"beginbfrange(.*?)endbfrange", text, re.S):
        for lo, hi, dest in re.findall(r"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*(\[[^\]]*\]|<[0-9A-Fa-f]+>)", section):
            first, last = int(lo, 16), int(hi, 16)
            if dest.startswith("["):
                for code, uni in zip(range(first, last + 1), re.findall(r"<([0-9A-Fa-f]+)>", dest), strict=False):
                    out[code] = _hex_text(uni)
            else:
                start = _hex_text(dest[1:-1])
                for offset in range(last - first + 1):
                    out[first + offset] = start[:-1] + chr(ord(start[-1]) + offset)
    return out


def _has_outline(font: TTFont, glyph: str) -> bool:
    if "glyf" in font:
        return font["glyf"][glyph].numberOfContours != 0
    return True  # CFF: assume drawn (these PDFs embed TrueType)


def missing_glyphs(pdf: bytes) -> set[str]:
    """Every character the PDF shows that its embedded font cannot draw (or that is set in a
    font the PDF does not embed at all). Empty means no character renders as a box."""
    missing: set[str] = set()
    reader = PdfReader(io.BytesIO(pdf))
    seen: set[int] = set()
    for page in reader.pages:
        fonts = page["/Resources"].get("/Font")
        for ref in (fonts.get_object().values() if fonts is not None else []):
            font = ref.get_object()
            if id(font) in seen:
                continue
            seen.add(id(font))
            if "/ToUnicode" not in font:
                missing.add(f"<no /ToUnicode in {font.get('/BaseFont')}>")
                continue
            used = _to_unicode(font["/ToUnicode"].get_object().get_data())
            descriptor = font.get("/FontDescriptor")
            if font.get("/Subtype") == "/Type0":
                descriptor = font["/DescendantFonts"][0].get_object().get("/FontDescriptor")
            stream = descriptor.get_object().get("/FontFile2") if descriptor is not None else None
            if stream is None:
                missing.update(used.values())  # not embedded: the viewer's guess, maybe boxes
                continue
            embedded = TTFont(io.BytesIO(stream.get_object().get_data()))
            # A simple TrueType font maps its codes in a (1,0) or (3,0) subtable, not Unicode.
            cmap: dict[int, str] = {}
            for table in embedded["cmap"].tables:
                cmap = {**table.cmap, **cmap}
            for code, char in used.items():
                if len(char) == 1 and unicodedata.category(char) == "Cc":
                    continue  # reportlab's subsets reserve the ASCII control codes; never drawn
                glyph = cmap.get(code) or cmap.get(0xF000 + code)
                if glyph is None or embedded.getGlyphID(glyph) == 0 or (
                    not char.isspace() and not _has_outline(embedded, glyph)
                ):
                    missing.add(char)
    return missing
