"""QIDO-RS and WADO-RS against the hospital PACS: find a study, pick key images, fetch them.

Only what posting key images into a case room needs: study lookup by accession number,
Study Instance UID or patient ID; series and instance listings; retrieval of single
instances. Answers are parsed from the DICOM JSON model (PS3.18 F.2) into small frozen
records so nothing downstream handles tag numbers.

Two safety choices shape the API. Search values are never wildcards: a chat user typing
``*`` must not list the PACS. And search results are checked against the requested keys,
because a PACS that silently ignores an unsupported filter would otherwise return other
patients' studies into a patient's room.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import Any, TypedDict
from urllib.parse import quote, urlencode

import aiohttp

STUDY_FIELDS = ("0020000D", "00080050", "00100020", "00100010", "00081030", "00080020",
                "00080061")
SERIES_FIELDS = ("0020000E", "00080060", "0008103E", "00200011", "00201209")
INSTANCE_FIELDS = ("00080018", "0020000E", "0020000D", "00200013")

# Series whose objects are not pictures (reports, presentation states, key object
# selections, segmentations, RT plans, waveforms): rendering one would only produce an error.
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "SEG", "RTSTRUCT", "RTPLAN", "RTRECORD",
                                  "DOC", "ECG", "HD", "REG", "FID", "AU"})

DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_STUDY_UID_REFERENCE = re.compile(r"[0-9]+(\.[0-9]+)+")
_WILDCARDS = ("*", "?", "\\")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


class DicomWebError(Exception):
    """The PACS could not be reached or answered with something unusable; the message names
    the request and the HTTP status so an admin can replay it with curl."""


@dataclass(frozen=True, slots=True)
class Study:
    study_uid: str
    accession: str
    patient_id: str
    patient_name: str  # DICOM PN form, e.g. "Doe^John" or "王建国"
    description: str
    date: dt.date | None
    modalities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Series:
    series_uid: str
    modality: str
    description: str
    number: int | None
    instances: int | None  # None when the PACS does not report the count


@dataclass(frozen=True, slots=True)
class Instance:
    sop_uid: str
    series_uid: str
    study_uid: str
    number: int | None


class StudyReference(TypedDict, total=False):
    """What a user typed, as the keyword of ``find_studies`` it names."""

    accession: str
    study_uid: str


def find_by_reference(text: str) -> StudyReference:
    """Keyword arguments for ``find_studies`` from what a user typed after a command.

    Study Instance UIDs are dotted digit groups of at most 64 characters; anything else is
    taken as an accession number, which is what clinicians usually have at hand (it is on
    the request form). Raises ``ValueError`` for an empty reference or one with wildcards.
    """
    value = text.strip()
    if not value:
        raise ValueError("no study reference given: type an accession number or a Study UID")
    if any(char in value for char in _WILDCARDS):
        raise ValueError(f"wildcards are not allowed in a study reference: {value!r}")
    if len(value) <= 64 and _STUDY_UID_REFERENCE.fullmatch(value):
        return {"study_uid": value}
    return {"accession": value}


def parse_multipart_related(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a ``multipart/related`` body (RFC 2387) into (headers, content) parts.

    Written by hand rather than with aiohttp's streaming reader because PACS framing varies:
    quoted and unquoted boundaries, LF instead of CRLF, a preamble, parts with or without
    Content-Length, and a missing close delimiter on some servers. Header names are
    lower-cased. Raises ``ValueError`` when there is no boundary or no complete part.
    """
    message = Message()
    message["Content-Type"] = content_type
    raw_boundary = message.get_param("boundary")
    if not raw_boundary:
        raise ValueError(f"no boundary in Content-Type {content_type!r}")
    delimiter = b"--" + collapse_rfc2231_value(raw_boundary).encode("latin-1")

    if body.startswith(delimiter):
        position = 0
    else:
        found = body.find(b"\n" + delimiter)
        if found < 0:
            raise ValueError("multipart body does not contain its boundary")
        position = found + 1

    parts: list[tuple[dict[str, str], bytes]] = []
    while True:
        after = position + len(delimiter)
        if body[after:after + 2] == b"--":
            break
        line_end = body.find(b"\n", after)
        headers_start = line_end + 1
        trailing = len(body) - headers_start <= 16 and not body[headers_start:].strip()
        if line_end < 0 or trailing:
            break  # a last delimiter without the closing "--"
        if body.startswith((b"\r\n", b"\n"), headers_start):
            headers: dict[str, str] = {}
            content_start = body.index(b"\n", headers_start) + 1
        else:
            blank = _BLANK_LINE.search(body, headers_start)
            if blank is None:
                raise ValueError("multipart part is truncated inside its headers")
            headers = _part_headers(body[headers_start:blank.start()])
            content_start = blank.end()
        content_end, next_position = _part_end(body, content_start, delimiter, headers)
        if content_end < 0:
            raise ValueError("multipart part is truncated: its closing boundary is missing")
        parts.append((headers, body[content_start:content_end]))
        position = next_position
    if not parts:
        raise ValueError("multipart body has no parts")
    return parts


def _part_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").splitlines():
        name, separator, value = line.partition(":")
        if separator:
            headers[name.strip().lower()] = value.strip()
    return headers


def _part_end(body: bytes, start: int, delimiter: bytes,
              headers: Mapping[str, str]) -> tuple[int, int]:
    """End of a part's content and the position of the next delimiter. A Content-Length is
    trusted only if the delimiter really follows it, so a wrong length cannot cut a file."""
    length = headers.get("content-length", "")
    if length.isdigit():
        end = start + int(length)
        for line_break in (b"\r\n", b"\n"):
            if body.startswith(line_break + delimiter, end):
                return end, end + len(line_break)
    for line_break in (b"\r\n", b"\n"):
        found = body.find(line_break + delimiter, start)
        if found >= 0:
            return found, found + len(line_break)
    return -1, -1


class DicomWebClient:
    """One PACS endpoint. Pass a ``session`` to share connections with the rest of the
    appservice; otherwise the client opens its own on first use and closes it in
    ``close()`` or at the end of ``async with``. ``headers`` go on every request (typically
    ``Authorization``); ``timeout`` is per request, in seconds."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._headers = dict(headers or {})
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def __aenter__(self) -> DicomWebClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session this client created; a session passed in belongs to the caller."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def find_studies(self, *, accession: str | None = None, study_uid: str | None = None,
                           patient_id: str | None = None, limit: int = 20) -> list[Study]:
        """Studies matching every key given (at least one is required, so a bare search cannot
        list the whole PACS); [] when nothing matches."""
        keys = {"StudyInstanceUID": study_uid, "AccessionNumber": accession,
                "PatientID": patient_id}
        wanted = {name: value.strip() for name, value in keys.items() if value and value.strip()}
        if not wanted:
            raise ValueError("find_studies needs an accession, a study UID or a patient ID")
        for value in wanted.values():
            if any(char in value for char in _WILDCARDS):
                raise ValueError(f"wildcards are not allowed in study searches: {value!r}")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        params = [*wanted.items(), ("limit", str(limit)),
                  *(("includefield", tag) for tag in STUDY_FIELDS)]
        studies = [_study(item) for item in await self._search("/studies", params)]
        checks = {"StudyInstanceUID": "study_uid", "AccessionNumber": "accession",
                  "PatientID": "patient_id"}
        return [study for study in studies
                if all(getattr(study, checks[name]) == value for name, value in wanted.items())]

    async def series(self, study_uid: str) -> list[Series]:
        """Series of a study ordered by Series Number (unnumbered last), as a viewer lists them."""
        path = f"/studies/{_path_uid(study_uid)}/series"
        params = [("includefield", tag) for tag in SERIES_FIELDS]
        found = [_series(item) for item in await self._search(path, params)]
        return sorted(found, key=lambda s: (s.number is None, s.number or 0, s.series_uid))

    async def instances(self, study_uid: str, series_uid: str) -> list[Instance]:
        """Instances of a series ordered by Instance Number (unnumbered last)."""
        path = f"/studies/{_path_uid(study_uid)}/series/{_path_uid(series_uid)}/instances"
        params = [("includefield", tag) for tag in INSTANCE_FIELDS]
        found = [_instance(item, study_uid, series_uid)
                 for item in await self._search(path, params)]
        return sorted(found, key=lambda i: (i.number is None, i.number or 0, i.sop_uid))

    async def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str, *,
                                transfer_syntax: str | None = None) -> bytes:
        """One instance as DICOM Part-10 bytes.

        Without ``transfer_syntax`` the PACS must send Explicit VR Little Endian (PS3.18
        8.7.3.5.2), which any renderer can decode; pass ``"*"`` to get the stored encoding
        (smaller for JPEG cine loops, but possibly undecodable here).
        """
        path = (f"/studies/{_path_uid(study_uid)}/series/{_path_uid(series_uid)}"
                f"/instances/{_path_uid(sop_uid)}")
        accept = MULTIPART_DICOM
        if transfer_syntax:
            accept += f"; transfer-syntax={transfer_syntax}"
        _status, content_type, body, shown = await self._get(path, [], accept)
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type == "multipart/related":
            try:
                parts = parse_multipart_related(body, content_type)
            except ValueError as exc:
                raise DicomWebError(f"GET {shown}: unreadable multipart response: {exc}") from exc
            dicom = [content for headers, content in parts
                     if headers.get("content-type", "application/dicom").split(";")[0]
                     .strip().lower() == "application/dicom"]
            if not dicom:
                raise DicomWebError(f"GET {shown}: the multipart response has no DICOM part")
            data = dicom[0]
        elif media_type in ("application/dicom", "application/octet-stream", ""):
            data = body
        else:
            raise DicomWebError(f"GET {shown}: expected DICOM, got {content_type!r}")
        if data[128:132] != b"DICM":
            raise DicomWebError(f"GET {shown}: the response is not a DICOM Part-10 file")
        return data

    async def key_images(self, study_uid: str,
                         limit: int = 4) -> list[tuple[Series, Instance, bytes]]:
        """The middle instance (by Instance Number) of each image series, in series order, for
        up to ``limit`` series: the middle slice of a stack is the one most likely to show
        the organ, where the first and last are often blank or scout-like."""
        picked: list[tuple[Series, Instance, bytes]] = []
        if limit < 1:
            return picked
        for series in await self.series(study_uid):
            if series.modality.upper() in NON_IMAGE_MODALITIES or series.instances == 0:
                continue
            instances = await self.instances(study_uid, series.series_uid)
            if not instances:
                continue
            middle = instances[len(instances) // 2]
            data = await self.retrieve_instance(study_uid, series.series_uid, middle.sop_uid)
            picked.append((series, middle, data))
            if len(picked) >= limit:
                break
        return picked

    async def _search(self, path: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        status, _content_type, body, shown = await self._get(path, params, DICOM_JSON)
        if status == 204 or not body.strip():
            return []
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise DicomWebError(f"GET {shown}: the response is not DICOM JSON ({exc})") from exc
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise DicomWebError(f"GET {shown}: expected a JSON array of datasets")
        return data

    async def _get(self, path: str, params: list[tuple[str, str]],
                   accept: str) -> tuple[int, str, bytes, str]:
        """Status, Content-Type, body and the URL as shown in errors."""
        url = self.base_url + path
        shown = f"{url}?{urlencode(params)}" if params else url
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {**self._headers, "Accept": accept}
        try:
            async with self._session.get(url, params=params, headers=headers,
                                         timeout=self._timeout) as response:
                body = await response.read()
                if not 200 <= response.status < 300:
                    status = f"HTTP {response.status} {response.reason or ''}".rstrip()
                    raise DicomWebError(f"GET {shown} failed: {status}{_detail(body)}")
                return response.status, response.headers.get("Content-Type", ""), body, shown
        except DicomWebError:
            raise
        except TimeoutError as exc:
            raise DicomWebError(f"GET {shown} failed: no answer within "
                                f"{self._timeout.total:g} s") from exc
        except aiohttp.ClientError as exc:
            raise DicomWebError(f"GET {shown} failed: {exc or type(exc).__name__}") from exc


def _detail(body: bytes) -> str:
    """A short excerpt of an error body: PACS explain refusals there (Orthanc's "Details")."""
    text = " ".join(body[:300].decode("utf-8", "replace").split())
    return f": {text}" if text else ""


def _path_uid(uid: str) -> str:
    """UIDs go into URL paths, so anything but dotted digits (say ``../``) is refused here
    rather than sent to the PACS."""
    value = uid.strip()
    if len(value) > 64 or not _UID.fullmatch(value):
        raise ValueError(f"not a DICOM UID: {uid!r}")
    return quote(value, safe="")


def _values(item: Mapping[str, Any], tag: str) -> list[Any]:
    element = item.get(tag)
    if not isinstance(element, Mapping):
        return []
    values = element.get("Value")
    return values if isinstance(values, list) else []


def _text(item: Mapping[str, Any], tag: str) -> str:
    values = _values(item, tag)
    if not values or values[0] is None:
        return ""
    value = values[0]
    if isinstance(value, Mapping):  # PN: prefer the alphabetic form, as the JSON model orders
        for group in ("Alphabetic", "Ideographic", "Phonetic"):
            if value.get(group):
                return str(value[group]).strip()
        return ""
    return str(value).strip()


def _int(item: Mapping[str, Any], tag: str) -> int | None:
    """IS values arrive as JSON numbers from most servers but as strings from some."""
    values = _values(item, tag)
    if not values or values[0] is None or isinstance(values[0], bool):
        return None
    try:
        number = float(str(values[0]).strip())
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _date(item: Mapping[str, Any], tag: str) -> dt.date | None:
    text = _text(item, tag).replace("-", "").replace(".", "")
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def _codes(values: Iterable[Any]) -> tuple[str, ...]:
    """Multi-valued CS, tolerating servers that send one backslash-joined string."""
    codes: list[str] = []
    for value in values:
        for code in str(value).split("\\"):
            if code.strip() and code.strip() not in codes:
                codes.append(code.strip())
    return tuple(codes)


def _study(item: Mapping[str, Any]) -> Study:
    return Study(
        study_uid=_text(item, "0020000D"),
        accession=_text(item, "00080050"),
        patient_id=_text(item, "00100020"),
        patient_name=_text(item, "00100010"),
        description=_text(item, "00081030"),
        date=_date(item, "00080020"),
        modalities=_codes(_values(item, "00080061")),
    )


def _series(item: Mapping[str, Any]) -> Series:
    return Series(
        series_uid=_text(item, "0020000E"),
        modality=_text(item, "00080060"),
        description=_text(item, "0008103E"),
        number=_int(item, "00200011"),
        instances=_int(item, "00201209"),
    )


def _instance(item: Mapping[str, Any], study_uid: str, series_uid: str) -> Instance:
    return Instance(
        sop_uid=_text(item, "00080018"),
        series_uid=_text(item, "0020000E") or series_uid,
        study_uid=_text(item, "0020000D") or study_uid,
        number=_int(item, "00200013"),
    )
