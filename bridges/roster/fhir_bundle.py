"""A FHIR R4 Bundle read as plain JSON: its resources, how references find them, instants.

Deliberately no FHIR model library: a roster needs four resource types and a handful of
fields, and plain dicts let every problem be reported instead of failing on the first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bridges.roster.text import decode
from carematrix.oncall.model import FeedError, FeedInvalid

# FHIR ``instant``: always seconds and always an offset, unlike ``dateTime``.
INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
INSTANT_HINT = "a FHIR instant with seconds and an offset, e.g. 2025-03-03T08:00:00+08:00"


@dataclass(frozen=True)
class Entry:
    resource: dict[str, Any]
    where: str  # source#Type/id, or source#entry[i] for a resource without id

    @property
    def type(self) -> str:
        return str(self.resource.get("resourceType"))


@dataclass
class Bundle:
    entries: list[Entry] = field(default_factory=list)
    index: dict[str, Entry] = field(default_factory=dict)  # "Type/id" and fullUrl
    errors: list[FeedError] = field(default_factory=list)

    def of_type(self, resource_type: str) -> list[Entry]:
        return [e for e in self.entries if e.type == resource_type]

    def resolve(self, reference: str) -> Entry | None:
        """Relative (``Schedule/1``), absolute (``https://…/Schedule/1``, with or without
        ``/_history/n``) and ``urn:uuid:`` references via the entry's fullUrl."""
        if reference in self.index:
            return self.index[reference]
        path = reference.split("/_history/")[0].rstrip("/")
        return self.index.get(path) or self.index.get("/".join(path.split("/")[-2:]))


def reference_of(value: object) -> str | None:
    """The ``reference`` string of a FHIR Reference, None when there is none."""
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        return value["reference"].strip() or None
    return None


def referenced_type(reference: str) -> str | None:
    """The type a literal reference names (``Location/7`` -> Location), if any."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 and parts[-2][:1].isupper() else None


def instant(value: object) -> datetime | None:
    match = INSTANT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    text = str(value)
    if match.group(1):  # FHIR allows any number of fractional digits; datetime wants 6
        text = text.replace(match.group(1), match.group(1)[:7].ljust(7, "0"), 1)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:  # shaped like an instant but no real time, e.g. month 13
        return None


def load_bundle(data: bytes, source: str) -> Bundle:
    """Raises for problems with the Bundle as such; problems with single entries are
    collected in ``errors`` so the caller can add its own and report them all."""
    text = decode(data, "utf-8", source)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FeedInvalid([FeedError(f"{source}:{exc.lineno}",
                                     f"not valid JSON: {exc.msg} (column {exc.colno})")]) from exc
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        found = document.get("resourceType") if isinstance(document, dict) else None
        what = f"resourceType '{found}'" if found else "no resourceType"
        raise FeedInvalid([FeedError(source, f"expected a FHIR Bundle, found {what}")])
    raw_entries = document.get("entry", [])
    if not isinstance(raw_entries, list):
        raise FeedInvalid([FeedError(f"{source}#entry", "Bundle.entry is not a list")])
    bundle = Bundle()
    for number, raw in enumerate(raw_entries):
        path = f"{source}#entry[{number}]"
        resource = raw.get("resource") if isinstance(raw, dict) else None
        if not isinstance(resource, dict):
            bundle.errors.append(FeedError(path, "entry has no resource"))
            continue
        kind, ident = resource.get("resourceType"), resource.get("id")
        if not isinstance(kind, str) or not kind:
            bundle.errors.append(FeedError(path, "resource has no resourceType"))
            continue
        local = f"{kind}/{ident}" if isinstance(ident, str) and ident else None
        entry = Entry(resource, f"{source}#{local}" if local else path)
        bundle.entries.append(entry)
        full_url = raw.get("fullUrl")
        for key in (local, full_url if isinstance(full_url, str) else None):
            if key is None:
                continue
            if key in bundle.index and bundle.index[key] is not entry:
                bundle.errors.append(FeedError(entry.where, f"{key} appears twice in the bundle"))
            bundle.index.setdefault(key, entry)
    return bundle
