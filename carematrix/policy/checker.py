"""Walking parsed policy YAML while collecting errors that name file and line.

Every section builder (org, rooms, on-call, clinical) reads its part of the policy through a
``Checker``, so a mistake anywhere is reported the same way and all mistakes are collected, not
just the first.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from carematrix.policy.errors import PolicyError
from carematrix.policy.yamlsrc import LineDict, LineList

DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def kind_of(value: Any) -> str:
    """What a value is, in an admin's words, for "must be X, got Y" messages."""
    if value is None:
        return "nothing"
    names: dict[type, str] = {dict: "a mapping", LineDict: "a mapping", list: "a list", LineList: "a list"}
    return names.get(type(value), f"{type(value).__name__} {value!r}")


class Checker:
    """Collects errors for one file while walking its parsed YAML."""

    def __init__(self, file: str, errors: list[PolicyError]) -> None:
        self.file = file
        self.errors = errors

    def error(self, line: int, message: str) -> None:
        self.errors.append(PolicyError(self.file, line, message))

    def mapping(self, value: Any, line: int, what: str) -> LineDict | None:
        if not isinstance(value, LineDict):
            self.error(line, f"{what} must be a mapping (key: value), got {kind_of(value)}")
            return None
        return value

    def entries(self, value: Any, line: int, what: str) -> list[tuple[str, Any, int]]:
        """(key, value, line) of each entry of a mapping; none (after reporting) if ``value`` is
        not a mapping."""
        data = self.mapping(value, line, what)
        return [] if data is None else [(key, item, data.line_of(key)) for key, item in data.items()]

    def items(self, value: LineList, what: str) -> Iterator[LineDict]:
        """Each item of a list that must hold mappings; an item that is not one is reported
        and skipped."""
        for i, item in enumerate(value):
            data = self.mapping(item, value.line_of(i), what)
            if data is not None:
                yield data

    def keys(self, data: LineDict, allowed: Iterable[str], what: str) -> None:
        allowed = tuple(allowed)
        for key in data:
            if key not in allowed:
                self.error(
                    data.line_of(key),
                    f"unknown key '{key}' in {what}; valid keys are: {', '.join(allowed)}",
                )

    def text(self, data: LineDict, key: str, what: str, required: bool = True) -> str | None:
        if key not in data:
            if required:
                self.error(data.line, f"{what} is missing required key '{key}'")
            return None
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            self.error(data.line_of(key), f"'{key}' in {what} must be non-empty text")
            return None
        return value.strip()

    def choice(self, data: LineDict, key: str, allowed: tuple[str, ...], subject: str, default: str, invalid: str) -> str:
        """One of ``allowed`` (``default`` if the key is absent); ``invalid`` (after reporting) if
        it is something else, so the caller can fall back to the safer of the choices."""
        value = data.get(key, default)
        if value not in allowed:
            self.error(data.line_of(key), f"{subject} must be one of: {', '.join(allowed)}")
            return invalid
        return str(value)

    def text_list(self, data: LineDict, key: str, what: str) -> list[tuple[str, int]]:
        """A list of strings (a single string is accepted as a one-item list)."""
        if key not in data:
            return []
        value = data[key]
        if isinstance(value, str):
            return [(value, data.line_of(key))]
        if not isinstance(value, LineList):
            self.error(data.line_of(key), f"'{key}' in {what} must be a list of text")
            return []
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str | int) or isinstance(item, bool):
                self.error(value.line_of(i), f"'{key}' in {what} must list text, got {kind_of(item)}")
                continue
            out.append((str(item), value.line_of(i)))
        return out

    def duration(
        self, data: LineDict, key: str, what: str, minimum: int = 1, unit_required: bool = False
    ) -> int | None:
        """Seconds from ``90``, ``30s``, ``15m``, ``24h`` or ``180d``. Where a misread unit
        destroys data (retention: ``180`` meant as days would purge after three minutes), a
        bare number is refused."""
        value = data.get(key)
        text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
        match = DURATION_RE.match(text)
        if match and unit_required and not match.group(2):
            self.error(
                data.line_of(key),
                f"'{key}' of {what} needs a unit: write {text.strip()}d for days, {text.strip()}h for hours "
                "(a bare number would mean seconds)",
            )
            return None
        if not match:
            self.error(
                data.line_of(key),
                f"'{key}' of {what} must be a duration like 30s, 15m, 24h or 180d, got {kind_of(value)}",
            )
            return None
        seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        if seconds < minimum:
            self.error(data.line_of(key), f"'{key}' of {what} must be at least {minimum} seconds")
            return None
        return seconds

    def template(self, line: int, template: str, fields: tuple[str, ...], what: str) -> bool:
        """Is ``template`` a format string that uses only ``fields``? Reports it if not."""
        try:
            used = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as exc:
            self.error(line, f"{what} is not a valid template: {exc}")
            return False
        bad = [f for f in used if f not in fields]
        if bad:
            self.error(line, f"{what} uses unknown field {{{bad[0]}}}; available: {', '.join('{' + f + '}' for f in fields)}")
            return False
        return True


@dataclass(frozen=True)
class Section:
    """One top-level section (``units:``, ``oncall:``, …) as found in a policy file."""

    value: Any
    checker: Checker
    line: int


@dataclass
class Sections:
    """Every top-level section of a policy directory, each from the one file defining it."""

    #: file an error about a missing section is reported against
    first_file: str
    errors: list[PolicyError]
    found: dict[str, Section] = field(default_factory=dict)

    def get(self, key: str) -> Section | None:
        return self.found.get(key)

    def mapping_section(self, key: str) -> tuple[LineDict, Checker] | None:
        """A section that must be a mapping; None (after reporting) if absent or not a mapping."""
        section = self.get(key)
        if section is None:
            return None
        data = section.checker.mapping(section.value, section.line, f"'{key}'")
        return None if data is None else (data, section.checker)

    def list_section(self, key: str, what: str) -> tuple[LineList, Checker] | None:
        """A section that must be a list; None (after reporting) if absent or not a list."""
        section = self.get(key)
        if section is None:
            return None
        if not isinstance(section.value, LineList):
            section.checker.error(section.line, f"'{key}' must be a list of {what}")
            return None
        return section.value, section.checker

    def missing(self, key: str) -> None:
        self.errors.append(PolicyError(self.first_file, 1, f"no '{key}' section in any policy file"))
