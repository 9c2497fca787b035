"""Fonts for the case archive PDF: embedded, so the record reads the same on every viewer.

A PDF that only names its font (a non-embedded CID font such as STSong-Light) leaves the
glyphs to whatever the reader's machine has; poppler, a browser or an EMR viewer then shows
empty boxes for characters its substitute lacks ("·", the no-break spaces that keep an
indented line indented). So the archive embeds a subset of an installed CJK TrueType font
(found as the watermark finds its font: carematrix.watermark.fonts) and, for the symbols a
CJK face lacks (✓, ‼, superscripts), a subset of DejaVu Sans. reportlab embeds TrueType
outlines only, so an OpenType/CFF face (Noto Sans CJK) is skipped for the next candidate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFError, TTFont

from carematrix.watermark.fonts import cjk_font_files, face_index, find_latin_font

log = logging.getLogger(__name__)

CJK_FONT = "CaseArchiveCJK"
SYMBOL_FONT = "CaseArchiveSymbols"
INSTALL_HINT = "install the Debian package fonts-wqy-zenhei"


class FontUnavailable(Exception):
    """No embeddable font with Chinese glyphs on this server: the PDF cannot be made readable."""


@dataclass(frozen=True)
class PdfFont:
    name: str  # as registered with reportlab
    path: str
    codepoints: frozenset[int]

    def covers(self, ch: str) -> bool:
        return ord(ch) in self.codepoints


def _load(name: str, path: str) -> PdfFont | None:
    try:
        font = TTFont(name, path, subfontIndex=face_index(path))
    except (TTFError, OSError, ValueError) as exc:
        log.info("font %s cannot be embedded in PDFs (%s); trying the next one", path, exc)
        return None
    if name not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(font)
    registered = pdfmetrics.getFont(name)
    if not isinstance(registered, TTFont):  # the name was taken by a font of another kind
        log.info("font name %s is registered for another font; %s not used", name, path)
        return None
    return PdfFont(name, path, frozenset(registered.face.charToGlyph))


@lru_cache(maxsize=1)
def pdf_fonts() -> tuple[PdfFont, ...]:
    """The fonts to set text in, in order of preference: a CJK face first, then symbols.

    Raises FontUnavailable when no CJK TrueType font is installed: an archive whose Chinese
    names come out as boxes or code points is not a record anyone can read.
    """
    cjk = next((f for path in cjk_font_files() if (f := _load(CJK_FONT, path)) is not None), None)
    if cjk is None:
        raise FontUnavailable(f"no font with Chinese characters that a PDF can embed; {INSTALL_HINT}")
    latin_path = find_latin_font()
    symbols = _load(SYMBOL_FONT, latin_path) if latin_path else None
    return (cjk,) if symbols is None else (cjk, symbols)
