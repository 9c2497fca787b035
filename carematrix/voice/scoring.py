"""How close a transcript is to what was said: character error rate for Chinese (it has no
spaces between words), word error rate for English. Punctuation and case do not count —
the recogniser's punctuation is not what a reader checks."""

from __future__ import annotations

import re
import unicodedata

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def _normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def chars(text: str) -> list[str]:
    return list(_NOT_WORD.sub("", _normal(text)))


def words(text: str) -> list[str]:
    return [w for w in _NOT_WORD.split(_normal(text)) if w]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[:], i
        for j, h in enumerate(hyp, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h))
    return row[-1]


def cer(reference: str, hypothesis: str) -> float:
    ref = chars(reference)
    return edit_distance(ref, chars(hypothesis)) / max(len(ref), 1)


def wer(reference: str, hypothesis: str) -> float:
    ref = words(reference)
    return edit_distance(ref, words(hypothesis)) / max(len(ref), 1)
