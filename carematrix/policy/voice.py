"""The ``voice:`` policy section: how voice messages are transcribed on the hospital's own
servers — whether at all, the longest message transcribed, the language (detected, or fixed
per unit) and the medical glossary that steers the recogniser.

The glossary matters more than any other setting: a small on-premises model hears 血钾
(serum potassium) as the homophone 血甲 unless the ward's vocabulary is given to it as the
initial prompt. Hospital-wide terms apply everywhere; a unit adds its own, and a unit below
another inherits its parent's terms (cardiology's terms reach Ward 5A).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from carematrix.policy.checker import Checker, Sections, kind_of
from carematrix.policy.org import Org
from carematrix.policy.yamlsrc import LineDict

SECTIONS = ("voice",)

#: ``auto``: the recogniser detects the language; otherwise the language every message of
#: the unit is taken to be in.
LANGUAGES = ("auto", "zh", "en")
DEFAULT_MAX_SECONDS = 120
MAX_MAX_SECONDS = 600
#: The recogniser's initial prompt holds at most this many characters of glossary (Whisper
#: reads 224 tokens of prompt; Chinese terms take one to three tokens a character).
PROMPT_CHARS = 160


@dataclass(frozen=True)
class UnitVoice:
    language: str | None  # None: as the hospital's (or the parent unit's) setting
    glossary: tuple[str, ...]


@dataclass(frozen=True)
class VoicePolicy:
    transcribe: bool = True
    language: str = "auto"
    max_seconds: int = DEFAULT_MAX_SECONDS
    glossary: tuple[str, ...] = ()
    units: dict[str, UnitVoice] = field(default_factory=dict)

    def settings_for(self, chain: list[str]) -> tuple[str, tuple[str, ...]]:
        """The language and glossary for a message of the unit whose ancestry (root first,
        the unit last) is ``chain``: the nearest unit's language wins; glossaries add up,
        the most specific terms first (they survive when the prompt is cut)."""
        language = self.language
        terms: list[str] = []
        for unit_id in chain:
            unit = self.units.get(unit_id)
            if unit is None:
                continue
            if unit.language is not None:
                language = unit.language
            terms[:0] = [t for t in unit.glossary if t not in terms]
        terms += [t for t in self.glossary if t not in terms]
        return language, tuple(terms)


DEFAULT_VOICE = VoicePolicy()


def parse_voice(sections: Sections, org: Org) -> VoicePolicy:
    """The ``voice:`` section checked against the units; the defaults (transcribe, detect the
    language, two minutes, no glossary) if the hospital has none."""
    found = sections.mapping_section("voice")
    if found is None:
        return DEFAULT_VOICE
    data, chk = found
    chk.keys(data, ("transcribe", "language", "max_seconds", "glossary", "units"), "'voice'")
    transcribe = data.get("transcribe", True)
    if not isinstance(transcribe, bool):
        chk.error(data.line_of("transcribe"), "'voice.transcribe' must be true or false")
        transcribe = True
    language = chk.choice(data, "language", LANGUAGES, "'voice.language'", "auto", "auto")
    max_seconds = data.get("max_seconds", DEFAULT_MAX_SECONDS)
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, int) or not 1 <= max_seconds <= MAX_MAX_SECONDS:
        chk.error(
            data.line_of("max_seconds"),
            f"'voice.max_seconds' must be a whole number of seconds from 1 to {MAX_MAX_SECONDS}, got {kind_of(max_seconds)}",
        )
        max_seconds = DEFAULT_MAX_SECONDS
    glossary = _glossary(data, chk, "'voice'")
    units: dict[str, UnitVoice] = {}
    if "units" in data:
        for unit_id, body, line in chk.entries(data["units"], data.line_of("units"), "'voice.units'"):
            if unit_id not in org.units:
                chk.error(line, f"'voice.units' names unknown unit '{unit_id}'")
                continue
            what = f"voice settings of unit '{unit_id}'"
            spec = chk.mapping(body, line, what)
            if spec is None:
                continue
            chk.keys(spec, ("language", "glossary"), what)
            unit_language = chk.choice(spec, "language", LANGUAGES, f"'language' of {what}", language, "auto") if "language" in spec else None
            units[str(unit_id)] = UnitVoice(unit_language, _glossary(spec, chk, what))
    return VoicePolicy(transcribe, language, max_seconds, glossary, units)


def _glossary(data: LineDict, chk: Checker, what: str) -> tuple[str, ...]:
    terms: list[str] = []
    for term, line in chk.text_list(data, "glossary", what):
        term = term.strip()
        if not term or len(term) > 40 or "\n" in term:
            chk.error(line, f"a glossary term of {what} must be one line of at most 40 characters, got {term!r}")
            continue
        if term not in terms:
            terms.append(term)
    return tuple(terms)
