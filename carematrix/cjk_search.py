"""Chinese (and other CJK) text in the full-text indexes: the one segmentation the index and
the query share.

Chinese writes names, units and titles without spaces ("心内科 主班医生", "患者王建国血钾7.2").
The databases' full-text indexes (SQLite FTS, PostgreSQL ``to_tsvector``) cut text only at
spaces and punctuation, so a whole run of Chinese characters becomes one token, and a search
for part of it (a 2-character name, a unit inside a longer title) finds nothing. Worse,
Synapse splits the *query* with a dictionary segmenter (心内科 → 心 + 内科) that the index
never sees. Both sides must cut text the same way.

The form used here needs no dictionary and finds any part of a name: every run of CJK
characters is indexed as its single characters and its overlapping character pairs
(bigrams): 心内科 → 心 内 科 心内 内科. A query run of one character is that character; a
longer one is its pairs (王建国 → 王建 建国), which every text containing the run has, side
by side. Text outside CJK runs is left to the database as before, so English search is
unchanged; in a message it is also indexed set apart from the runs, because clinical notes
write Latin words and numbers against the Chinese with no space ("王建国CT示右肺结节8mm",
"ECG示ST段抬高"), and the database would keep "CT" inside one long token. And a number
written against its unit ("血钾7.2mmol/L", "K 7.2mmol/L") is cut by the databases where no
reader would cut it (SQLite: 7 | 2mmol | l; PostgreSQL keeps "mmol/l" whole), so the line also
holds such a value as number and unit parts, in English messages too.

Pure functions: used by the Synapse adapter (synapse_modules/adapter/search.py) on both
the index and the query side, and unit-tested without Synapse.
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from types import ModuleType

# Version of the index form: stored with a re-indexed table, so a change of the form
# re-indexes existing rows at the next start. 2: a message's Latin words and numbers are
# indexed apart from its CJK runs too, folded from full-width forms. 3: a number glued to its
# unit is indexed as number and unit parts too. 4: a value glued to its short label (K7.2,
# Na128, K+6.8, Hb78) is indexed as label and number too; directory names gain their pinyin.
INDEX_FORM = "cjk-bigram-4"

# Han ideographs (with extensions and compatibility forms), kana and Hangul: scripts written
# without spaces between words (Hangul is spaced, but its syllable runs are short words that
# the pairs still find).
_CJK_CLASS = (
    "\u3005\u3007\u3021-\u3029\u3038-\u303b"  # 々 〇 and Suzhou numerals
    "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff"  # hiragana, katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # Han: extension A, unified, compatibility
    "\uac00-\ud7af"  # Hangul syllables
    "\U00020000-\U0003134f"  # Han extensions B-H
)
_CJK = re.compile(f"[{_CJK_CLASS}]")
_HAN_RUN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]+")
_CJK_RUN = re.compile(f"[{_CJK_CLASS}]+")
# Not ASCII and not a letter or digit: CJK punctuation (。、「」【】…) that survives folding.
# SQLite's index takes any non-ASCII character for part of a word ("8mm。" would be one).
_NOT_A_WORD = re.compile(r"[^\x00-\x7f\w]")
_WORD = re.compile(r"[^\W_]")  # a letter or digit: what the databases keep as (part of) a word
# A number glued to its unit: 7.2mmol/L, 120mg, 0,5ml, 38.5°C (℃ folds to °C), also right
# after Chinese (血钾7.2mmol/L), not inside a Latin word (HbA1c, v1.2beta).
_GLUED_UNIT = re.compile(r"(?<![A-Za-z0-9.,])(\d+(?:[.,]\d+)*)((?:[A-Za-zµμ°]+/?)+)")
# A unit with a slash after a number and a space (128 mmol/L): PostgreSQL keeps "mmol/l" as one
# word, so "mmol" would find it on SQLite only.
# A value written against its short label, as lab shorthand does (K7.2, Na128, K+6.8, Hb78,
# WBC12.5, K7.2mmol/L): the databases keep "k7"/"k7.2"/"na128" and (PostgreSQL) "+6.8" as
# words, so the value alone found nothing. The label is 1-4 letters of one case, or a capital
# and small letters, and a unit glued after the value is a common lab unit: COVID19, SpO2,
# HbA1c and v1.2beta are names, not values.
_LABELLED_VALUE = re.compile(
    r"(?<![A-Za-z0-9])([A-Z][a-z]{1,3}|[A-Z]{1,4}|[a-z]{1,4})\+?(\d+(?:[.,]\d+)*)"
    r"((?i:mmol|umol|µmol|μmol|mmhg|mg|ml|bpm|iu|g|l|u|°c)(?:/[A-Za-z]+)*)?(?![A-Za-z0-9]|[.,]\d)"
)
_SLASH_UNIT = re.compile(r"(?<![A-Za-z0-9.,])\d+(?:[.,]\d+)*\s+([A-Za-zµμ]+(?:/[A-Za-z]+)+)")


def is_cjk(text: str) -> bool:
    """True if ``text`` holds at least one CJK character."""
    return _CJK.search(text) is not None


def is_cjk_word(word: str) -> bool:
    """True if ``word`` is made of CJK characters only."""
    return bool(word) and _CJK_RUN.fullmatch(word) is not None


def cjk_runs(text: str) -> list[str]:
    """The runs of CJK characters in ``text``, in order."""
    return _CJK_RUN.findall(text)


def index_grams(run: str) -> list[str]:
    """What a CJK run is indexed as: its characters, then its overlapping pairs."""
    chars = list(run)
    return chars + [a + b for a, b in zip(chars, chars[1:], strict=False)]


def query_grams(run: str) -> list[str]:
    """What a CJK run is searched as: one character as itself, a longer run as its pairs.
    (A pair also matches as the prefix of nothing longer: pairs are the longest tokens.)"""
    if len(run) <= 1:
        return [run] if run else []
    return [a + b for a, b in zip(run, run[1:], strict=False)]


def index_form(text: str) -> str:
    """``text`` with each CJK run replaced by its index grams, set apart by spaces; the rest
    unchanged. For the user directory, whose index is rebuilt from the display name."""
    return _CJK_RUN.sub(lambda m: " " + " ".join(index_grams(m.group())) + " ", text)


def pinyin_words(text: str) -> list[str]:
    """How staff type a Chinese name on a Latin keyboard, as words to index: for each run of
    Han characters its whole pinyin and its initials (李伟 → liwei, lw; 吕 → lv, as input
    methods write ü), and each syllable (li, wei: "li wei" finds it too). A surname's other
    readings give more whole forms (单 → shan…, dan…; 曾 → zeng…, ceng…): a name is read
    as its owner reads it, which no dictionary knows. Tones are left out; nobody types them."""
    runs = _HAN_RUN.findall(text)
    if not runs:
        return []
    py = _pypinyin()
    words: list[str] = []
    for run in runs:
        syllables = py.lazy_pinyin(run, errors="ignore")
        if len(syllables) != len(run) or not all(s.isascii() and s.isalpha() for s in syllables):
            continue  # a character the dictionary lacks: no reliable initials for this run
        rest = syllables[1:]
        others = py.pinyin(run[0], style=py.Style.NORMAL, heteronym=True)[0]
        readings = [syllables[0], *(r for r in others if r.isascii() and r.isalpha())]
        for first in dict.fromkeys(readings):
            words.append(first + "".join(rest))
            words.append(first[0] + "".join(s[0] for s in rest))
        words.extend(syllables)
    return list(dict.fromkeys(words))


@functools.cache
def _pypinyin() -> ModuleType:
    """pypinyin with its single-character readings only: its dictionary of phrases costs each
    process (every Synapse worker) 45 MB more and reads few names differently (names are
    not phrases; a surname's other readings are indexed anyway). Imported on first use, so a
    process that never indexes a Chinese name never loads it."""
    os.environ.setdefault("PYPINYIN_NO_PHRASES", "true")
    import pypinyin

    return pypinyin


# Between a name's index form and its pinyin in the directory's filtered text: a separator
# to both databases' full-text parsers (an ASCII control character), where the query side
# cuts the pinyin off again (:func:`without_pinyin`).
_PINYIN_MARK = "\x1f"


def directory_index_form(text: str) -> str:
    """What the user directory indexes of a display name (and, the filter being one, first
    makes of a query): :func:`index_form`, then the name's :func:`pinyin_words`."""
    words = pinyin_words(text)
    indexed = index_form(text)
    return f"{indexed} {_PINYIN_MARK} {' '.join(words)}" if words else indexed


def without_pinyin(filtered: str) -> str:
    """A directory query after the shared filter, without the pinyin the filter added: a
    query in Chinese is searched by its characters (the pinyin of 李 would also find 黎 and 理)."""
    return filtered.split(_PINYIN_MARK, 1)[0]


def split_cjk(text: str) -> list[tuple[bool, str]]:
    """``text`` as consecutive (is a CJK run, piece) pieces."""
    pieces: list[tuple[bool, str]] = []
    last = 0
    for match in _CJK_RUN.finditer(text):
        if match.start() > last:
            pieces.append((False, text[last:match.start()]))
        pieces.append((True, match.group()))
        last = match.end()
    if last < len(text):
        pieces.append((False, text[last:]))
    return pieces


def collapse_query_words(words: list[str]) -> list[str]:
    """The words of a directory query that went through :func:`index_form` (the directory
    applies one text filter to names and queries alike), back to the query form: a single
    character already inside one of the query's pairs adds nothing and is dropped, so
    心内科 is searched as 心内 & 内科 (and stays within the database's limit on words)."""
    pairs = [w for w in words if is_cjk_word(w) and len(w) == 2]
    kept: list[str] = []
    for word in words:
        if is_cjk_word(word) and len(word) == 1 and any(word in pair for pair in pairs):
            continue
        if word not in kept:
            kept.append(word)
    return kept


def _fold(text: str) -> str:
    """Full-width letters, digits and signs (ＣＴ ７．２，as a Chinese input method types them)
    as ASCII, and other compatibility forms (㎎, ℃) as their plain letters."""
    return unicodedata.normalize("NFKC", text)


def _plain(piece: str) -> str:
    return _NOT_A_WORD.sub(" ", piece)


def needs_index_line(text: str) -> bool:
    """True if the database alone would not find every word of ``text``: it has CJK runs,
    full-width / compatibility forms, or a value whose unit the databases cut their own way."""
    return (is_cjk(text) or _fold(text) != text or _GLUED_UNIT.search(text) is not None
            or _SLASH_UNIT.search(text) is not None or _LABELLED_VALUE.search(text) is not None)


def unit_parts(text: str) -> list[str]:
    """Each number glued to its unit in ``text`` as its parts: 7.2mmol/L → 7.2 mmol L, and a
    slashed unit after a value as its words (128 mmol/L → mmol L), so a search for the value
    or the unit finds it on either database (the words as written stay in the text)."""
    parts: list[str] = []
    for number, unit in _GLUED_UNIT.findall(text):
        parts.append(number)
        parts.extend(_plain(unit.replace("/", " ")).split())
    for unit in _SLASH_UNIT.findall(text):
        parts.extend(_plain(unit.replace("/", " ")).split())
    return parts


def labelled_values(text: str) -> list[str]:
    """Each value glued to its short label in ``text`` as label, number and unit parts:
    K7.2 → K 7.2, K+6.8mmol/L → K 6.8 mmol L."""
    parts: list[str] = []
    for label, number, unit in _LABELLED_VALUE.findall(text):
        parts += [label, number, *_plain(unit.replace("/", " ")).split()]
    return parts


def _line_v2(text: str) -> str:
    """The added line of index form 2: CJK runs as grams, the text between them folded."""
    parts = [" ".join(index_grams(piece)) if cjk else _plain(piece) for cjk, piece in split_cjk(_fold(text))]
    return " ".join(" ".join(parts).split())


def _line_v3(text: str) -> str:
    """The added line of index form 3: form 2's, then the parts of units."""
    folded = _fold(text)
    words = (_line_v2(text) if folded != text or is_cjk(folded) else "").split()
    present = set(words)
    return " ".join(words + [p for p in dict.fromkeys(unit_parts(folded)) if p not in present])


def index_line(text: str) -> str:
    """The line a message's indexed text gains: each CJK run as its index grams (the pairs
    of a run side by side), and the text between runs, folded, set apart from them (when
    the text has CJK runs or folds: otherwise the database has those words already); then
    the parts of every value's unit the databases would cut their own way (:func:`unit_parts`)
    and of every value glued to its label (:func:`labelled_values`)."""
    words = _line_v3(text).split()
    present = set(words)
    added = [p for p in dict.fromkeys(labelled_values(_fold(text))) if p not in present]
    return " ".join(words + added)


def _grams_line_v1(text: str) -> str:
    """The added line of index form 1 (CJK grams only), recognised when re-indexing."""
    return " ".join(gram for run in cjk_runs(text) for gram in index_grams(run))


def _earlier_lines(text: str) -> list[str]:
    """The lines earlier index forms added to ``text`` (those that added one)."""
    lines = []
    v3 = _line_v3(text)
    if v3:
        lines.append(v3)
    if is_cjk(text) or _fold(text) != text:
        lines.append(_line_v2(text))
    if is_cjk(text):
        lines.append(_grams_line_v1(text))
    return lines


def message_index_value(text: str) -> str:
    """What a message's text is indexed as: the text itself (so English and every other
    word is indexed as before), then :func:`index_line` when the database needs it. A value
    already indexed, in this form or one before, is recognised by its last line, so
    re-indexing replaces that line and re-indexing twice changes nothing."""
    if not needs_index_line(text):
        return text  # most messages: nothing more to compute on the way to the index
    head, _, tail = text.rpartition("\n")
    if head and needs_index_line(head):
        line = index_line(head)
        if tail == line:
            return text  # indexed in this form already
        if tail in _earlier_lines(head):
            return head + "\n" + line
    return text + "\n" + index_line(text)


def _has_words(piece: str) -> bool:
    return _WORD.search(_plain(piece)) is not None


def phrase_grams(run: str, after_words: bool, before_words: bool) -> list[str]:
    """A CJK run inside a quoted phrase, as the index has it next to the phrase's other words.

    The index holds a run as its characters, then its pairs (:func:`index_grams`): the word
    before the run is followed by the run's first *characters*, and the word after it follows
    the run's last *pair*. So a run with words of the phrase on both sides is its whole index
    form (it must be the whole run), one with words before it only is its characters (the
    run starts so), one with words after it only is its pairs (the run ends so), and one
    alone is its pairs. Searched as pairs throughout, "CT示右肺" found nothing."""
    if after_words and before_words:
        return index_grams(run)
    if after_words:
        return list(run)
    return query_grams(run)


def message_query(term: str) -> str:
    """A message search term with each CJK run in its query form. Outside quotes a run of
    more than one character becomes a quoted phrase of its pairs ("王建 建国": the pairs side by
    side, as in the index), so a leading ``-`` still negates the whole word; inside quotes
    the run joins the user's phrase as the index has it there (:func:`phrase_grams`)."""
    folded = _fold(term)
    if not is_cjk(folded):
        return term if folded == term else _plain(folded)
    term = folded
    out: list[str] = []
    for index, part in enumerate(term.split('"')):
        in_phrase = bool(index % 2)
        if index:
            out.append('"')
        pieces = split_cjk(part)
        for at, (cjk, piece) in enumerate(pieces):
            if not cjk:
                out.append(_plain(piece))
                continue
            if in_phrase:
                grams = phrase_grams(
                    piece,
                    after_words=any(c or _has_words(p) for c, p in pieces[:at]),
                    before_words=any(c or _has_words(p) for c, p in pieces[at + 1:]),
                )
                out.append(" " + " ".join(grams) + " ")
                continue
            grams = query_grams(piece)
            if len(grams) == 1:
                out.append(" " + grams[0] + " " if not out or not out[-1].endswith("-") else grams[0] + " ")
            else:
                out.append('"' + " ".join(grams) + '" ')
    return "".join(out)
