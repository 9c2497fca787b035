"""Find a font that can print the viewer's name. Staff names are often Chinese, and a mark that
shows tofu boxes instead of the name is useless as a deterrent, so CJK coverage comes first.

Lookup order: ``$CAREMATRIX_WATERMARK_FONT``; ``fc-list :lang=zh``; a scan of the usual font
directories for well-known CJK families; a plain sans font (DejaVu) for Latin text; Pillow's
built-in scalable font. Characters the chosen font cannot draw are printed as ``U+XXXX`` so the
mark still identifies the person (install ``fonts-noto-cjk`` to get real glyphs).
"""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

FontType = ImageFont.FreeTypeFont | ImageFont.ImageFont

ENV_VAR = "CAREMATRIX_WATERMARK_FONT"
_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
_FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
# Lower-cased file-name fragments of families known to carry Han glyphs, best first.
_CJK_HINTS = (
    "notosanscjk",
    "notosanssc",
    "sourcehansans",
    "wqy-zenhei",
    "wqy-microhei",
    "droidsansfallback",
    "notoserifcjk",
    "sourcehanserif",
    "uming",
    "ukai",
)
_LATIN_HINTS = ("dejavusans.ttf", "liberationsans-regular.ttf", "notosans-regular.ttf")
# A code point no font maps: its rendering is the font's "missing glyph" box.
_NOT_A_CHAR = "\U0010fffd"


def _run_fc(*args: str) -> list[str]:
    try:
        out = subprocess.run(
            ["fc-list", *args], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({line.split(":")[0].strip() for line in out.splitlines() if line.strip()})


def _font_files() -> list[Path]:
    found: list[Path] = []
    for base in _FONT_DIRS:
        root = Path(base).expanduser()
        if root.is_dir():
            found += [p for p in root.rglob("*") if p.suffix.lower() in _FONT_SUFFIXES]
    return found


def _best_by_hints(paths: list[str], hints: tuple[str, ...]) -> str | None:
    ranked = _by_hints(paths, hints)
    return ranked[0] if ranked else None


def _by_hints(paths: list[str], hints: tuple[str, ...]) -> list[str]:
    """``paths`` that match a hint, best hint first (each path once)."""
    ranked: list[str] = []
    for hint in hints:
        ranked += [p for p in paths if hint in Path(p).name.lower().replace(" ", "") and p not in ranked]
    return ranked


@lru_cache(maxsize=1)
def cjk_font_files() -> tuple[str, ...]:
    """Every font file with Chinese glyphs, best first (the override, then fontconfig's list
    ranked by the known families, then a directory scan).

    A list rather than one path because consumers differ in what they can load: Pillow draws
    any of them, while the case archive's PDF writer embeds TrueType outlines only and has to
    skip an OpenType/CFF face such as Noto Sans CJK.
    """
    found: list[str] = []
    override = os.environ.get(ENV_VAR)
    if override and Path(override).is_file():
        found.append(override)
    listed = [p for p in _run_fc(":lang=zh", "file") if Path(p).is_file()]
    if listed:
        found += _by_hints(listed, _CJK_HINTS) + listed
    else:
        found += _by_hints([str(p) for p in _font_files()], _CJK_HINTS)
    return tuple(dict.fromkeys(found))


def find_cjk_font() -> str | None:
    """Path of a font with Chinese glyphs, or ``None`` if this machine has none."""
    files = cjk_font_files()
    return files[0] if files else None


@lru_cache(maxsize=1)
def find_latin_font() -> str | None:
    return _best_by_hints([str(p) for p in _font_files()], _LATIN_HINTS)


def face_index(path: str) -> int:
    """In a CJK collection prefer the Simplified Chinese face: the same code points are drawn
    differently in the Japanese/Korean faces and the names here are mostly mainland Chinese."""
    if not path.lower().endswith((".ttc", ".otc")):
        return 0
    for index in range(16):
        try:
            family = ImageFont.truetype(path, 12, index=index).getname()[0] or ""
        except OSError:
            break
        if " SC" in family or family.endswith("SC") or "GB" in family:
            return index
    return 0


@lru_cache(maxsize=64)
def load_font(size: int) -> FontType:
    """A font at ``size`` pixels, following the lookup order in the module docstring."""
    for path in (find_cjk_font(), find_latin_font()):
        if path:
            try:
                return ImageFont.truetype(path, size, index=face_index(path))
            except OSError:
                continue
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=4096)
def _has_glyph(font: FontType, char: str) -> bool:
    missing = font.getmask(_NOT_A_CHAR)
    mask = font.getmask(char)
    return mask.size != missing.size or bytes(mask) != bytes(missing)


def renderable(text: str, font: FontType) -> str:
    """``text`` with every character the font would draw as a box replaced by ``U+XXXX``."""
    out: list[str] = []
    escaped_last = False
    for char in text:
        if char.isspace() or char.isascii() or _has_glyph(font, char):
            out.append(char)
            escaped_last = False
        else:
            out.append(f"{' ' if escaped_last else ''}U+{ord(char):04X}")
            escaped_last = True
    return "".join(out)
