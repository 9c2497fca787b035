"""The patient summary pinned in a case room when the case opens.

It is fetched once from the hospital's FHIR server so that everyone joining the discussion sees
the same picture (who the patient is, where they are, what they have, what they must not get,
the latest labs) without leaving the room. Being a snapshot, it says where every line came from
and when; being pinned next to clinical decisions, it must never show the wrong patient or pass
off "nothing on file" as "nothing there".
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from fhirclient.models.allergyintolerance import AllergyIntolerance
from fhirclient.models.bundle import Bundle
from fhirclient.models.codeableconcept import CodeableConcept
from fhirclient.models.condition import Condition
from fhirclient.models.encounter import Encounter
from fhirclient.models.fhirabstractbase import FHIRValidationError
from fhirclient.models.fhirabstractresource import FHIRAbstractResource
from fhirclient.models.fhirdate import FHIRDate
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirclient.server import (
    FHIRNotFoundException,
    FHIRPermissionDeniedException,
    FHIRServer,
    FHIRUnauthorizedException,
)

MRN_SYSTEM = "urn:carematrix:mrn"
# v3 ObservationInterpretation codes. Critical ones are what a reader must not miss.
CRITICAL_FLAGS = frozenset({"HH", "LL", "AA", "HU", "LU"})
ABNORMAL_FLAGS = frozenset({"H", "L", "A"})
_FLAG_RE = re.compile(r"\[(" + "|".join(sorted(CRITICAL_FLAGS | ABNORMAL_FLAGS, key=len,
                                                   reverse=True)) + r")\]")
_FHIR_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_CJK_RE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_ENCOUNTER_CLASSES = {
    "IMP": "inpatient",
    "ACUTE": "inpatient acute",
    "NONAC": "inpatient non-acute",
    "AMB": "ambulatory",
    "EMER": "emergency",
    "OBSENC": "observation",
    "HH": "home health",
    "VR": "virtual",
    "SS": "short stay",
    "PRENC": "pre-admission",
}
NO_ALLERGIES_TEXT = "未记录过敏史，并非确认“无已知过敏” No allergies recorded — not a confirmed 'no known allergies'"

# Headings and labels of the summary as staff read them: Chinese first, the English beside it.
WORDS = {
    "Demographics": "基本信息 Demographics",
    "Name": "姓名 Name",
    "Patient ID": "患者编号 Patient ID",
    "Gender": "性别 Gender",
    "Born": "出生日期 Born",
    "Encounters": "就诊记录 Encounters",
    "Active problems": "活动性问题 Active problems",
    "Allergies": "过敏史 Allergies",
    "Recent labs": "近期检验 Recent labs",
}

R = TypeVar("R", bound=FHIRAbstractResource)


class SummaryUnavailable(Exception):
    """The summary could not be fetched; the message is fit to show in the room."""


class PatientNotFound(SummaryUnavailable):
    """The FHIR server answered, and has no patient with that ID or MRN: not a passing
    failure but, when a person typed the ID, a slip (a name, a digit short) to tell them of."""


@dataclass(frozen=True)
class PatientSummary:
    patient_id: str
    name: str
    gender: str
    birth_date: str
    encounters: list[str]
    problems: list[str]
    allergies: list[str]
    labs: list[str]


# -- fetching -----------------------------------------------------------------------------


class _TimeoutSession(requests.Session):
    """fhirclient calls session.get() without a timeout; a hung EMR must not hang the bot."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(
        self, method: str, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if len(args) < 8:  # timeout is the ninth optional positional of Session.request
            kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, *args, **kwargs)


def _server(base_url: str, headers: dict[str, str] | None, timeout: float) -> FHIRServer:
    # No FHIRClient/auth object: the caller supplies ready-made headers (a bearer token from the
    # hospital's integration gateway), which fhirclient merges into every request via the session.
    try:
        srv = FHIRServer(None, base_uri=base_url)
    except Exception as exc:
        raise SummaryUnavailable(f"invalid FHIR base URL {base_url!r}") from exc
    srv.session.close()
    srv.session = _TimeoutSession(timeout)
    if headers:
        srv.session.headers.update(headers)
    return srv


def _search(srv: FHIRServer, cls: type[R], params: dict[str, str]) -> list[R]:
    """Only the first page: `_count` is how much we want, not a page size to walk past
    (fhirclient's perform_resources_iter would follow every `next` link)."""
    bundle = Bundle.read_from(cls.where(struct=params).construct(), srv)
    # Searchsets may carry OperationOutcomes (mode "outcome") or included resources.
    return [e.resource for e in bundle.entry or [] if isinstance(e.resource, cls)]


def _is_mrn(identifier: Any) -> bool:
    if identifier.system == MRN_SYSTEM:
        return True
    codings = identifier.type.coding if identifier.type and identifier.type.coding else []
    return any(c.code == "MR" for c in codings)


def _find_patient(srv: FHIRServer, patient_id: str) -> Patient:
    if _FHIR_ID_RE.match(patient_id):
        try:
            return Patient.read(patient_id, srv)
        except FHIRNotFoundException:
            pass
        except requests.HTTPError as exc:
            # 400: the server's ids have another format; 410: deleted, perhaps merged into a
            # record that carries the same MRN. Either way the identifier search decides.
            if exc.response is None or exc.response.status_code not in (400, 410):
                raise
    found = {p.id: p for p in _search(srv, Patient, {"identifier": patient_id})}
    if not found:
        raise PatientNotFound(f"no patient with ID or MRN {patient_id} on the FHIR server")
    if len(found) > 1:
        # Prefer a match on the medical record number over, say, an insurance number that
        # happens to have the same value; refuse if that still leaves a choice.
        value = patient_id.split("|")[-1]
        by_mrn = [
            p for p in found.values()
            if any(_is_mrn(i) and i.value == value for i in p.identifier or [])
        ]
        if len(by_mrn) != 1:
            raise SummaryUnavailable(
                f"{len(found)} patients match {patient_id}; refusing to guess which one"
            )
        return by_mrn[0]
    return next(iter(found.values()))


def fetch_summary(
    base_url: str, patient_id: str, headers: dict[str, str] | None = None, timeout: float = 10
) -> PatientSummary:
    """Synchronous (fhirclient is requests-based): call it from a worker thread in async code.

    ``patient_id`` is the FHIR resource id or, failing that, an identifier searched with
    ``Patient?identifier=`` (an MRN, optionally as ``system|value``). The returned
    ``patient_id`` is the MRN when the record has one, since that is what the case archive and
    clinicians use; otherwise the FHIR id.
    """
    if not patient_id.strip():
        raise SummaryUnavailable("no patient ID or MRN given")
    srv = _server(base_url, headers, timeout)
    try:
        patient = _find_patient(srv, patient_id.strip())
        pid = patient.id
        if not pid:
            raise SummaryUnavailable("the FHIR server returned a Patient without an id")
        encounters = _search(srv, Encounter, {"patient": pid, "_sort": "-date", "_count": "5"})
        conditions = _search(srv, Condition, {"patient": pid, "clinical-status": "active"})
        allergies = _search(
            srv, AllergyIntolerance, {"patient": pid, "clinical-status": "active"}
        )
        labs = _search(
            srv,
            Observation,
            {"patient": pid, "category": "laboratory", "_sort": "-date", "_count": "10"},
        )
        return PatientSummary(
            patient_id=_mrn(patient) or pid,
            name=_name(patient),
            gender=patient.gender or "unknown",
            birth_date=_date(patient.birthDate),
            encounters=[_encounter_line(e) for e in encounters],
            problems=[_condition_line(c) for c in conditions],
            allergies=[_allergy_line(a) for a in allergies],
            labs=[_lab_line(o) for o in labs],
        )
    except FHIRUnauthorizedException as exc:
        raise SummaryUnavailable("the FHIR server refused our credentials (401)") from exc
    except FHIRPermissionDeniedException as exc:
        raise SummaryUnavailable("the FHIR server denied access to this patient (403)") from exc
    except FHIRNotFoundException as exc:
        raise SummaryUnavailable(f"not found on the FHIR server: {exc.response.url}") from exc
    except requests.Timeout as exc:
        raise SummaryUnavailable(f"the FHIR server did not answer within {timeout:g} s") from exc
    except requests.ConnectionError as exc:
        raise SummaryUnavailable(f"cannot connect to the FHIR server at {base_url}") from exc
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise SummaryUnavailable(f"the FHIR server answered HTTP {status}") from exc
    except requests.JSONDecodeError as exc:  # before RequestException: it is one too
        reason = f"the FHIR server sent invalid data (not JSON): {_brief(exc)}"
        raise SummaryUnavailable(reason) from exc
    except requests.RequestException as exc:
        raise SummaryUnavailable(f"request to the FHIR server failed: {_brief(exc)}") from exc
    except (FHIRValidationError, ValueError, TypeError, AttributeError, KeyError) as exc:
        # Malformed resources: wrong types, unknown elements, missing required ones.
        raise SummaryUnavailable(f"the FHIR server sent invalid data: {_brief(exc)}") from exc
    finally:
        srv.session.close()


def _brief(exc: Exception) -> str:
    """One line, bounded: the reason is posted into a chat room, not a log file."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:299] + "…"


# -- one line per resource ----------------------------------------------------------------


def _date(value: FHIRDate | None) -> str:
    return value.isostring[:10] if value is not None and value.isostring else ""


def _datetime(value: FHIRDate | None) -> str:
    """Local time as the server sent it: the hospital's clock is the one clinicians read."""
    if value is None or not value.isostring:
        return ""
    iso = value.isostring
    if "T" in iso:
        return f"{iso[:10]} {iso[11:16]}"
    return iso


def _concept(concept: CodeableConcept | None) -> str:
    if concept is None:
        return ""
    if concept.text:
        return concept.text
    for coding in concept.coding or []:
        if coding.display:
            return coding.display
    for coding in concept.coding or []:
        if coding.code:
            return coding.code
    return ""


def _code(concept: CodeableConcept | None) -> str:
    return next((c.code for c in concept.coding or [] if c.code), "") if concept else ""


def _mrn(patient: Patient) -> str:
    return next((i.value for i in patient.identifier or [] if _is_mrn(i) and i.value), "")


def _name(patient: Patient) -> str:
    names = patient.name or []
    name = next((n for n in names if n.use == "official"), names[0] if names else None)
    if name is None:
        return "(no name recorded)"
    if name.text:
        return name.text
    family, given = name.family or "", "".join(name.given or [])
    if _CJK_RE.search(family + given):
        return family + given  # Chinese order, no space: 王建国
    return " ".join(part for part in [*(name.given or []), family] if part) or "(no name)"


def _encounter_line(enc: Encounter) -> str:
    period = enc.period
    start, end = _date(period.start) if period else "", _date(period.end) if period else ""
    when = f"{start}–{end}" if end and end != start else start
    klass = enc.class_fhir
    kind = ""
    if klass is not None:
        kind = klass.display or _ENCOUNTER_CLASSES.get(klass.code or "", klass.code or "")
    where = ", ".join(
        loc.location.display for loc in enc.location or [] if loc.location and loc.location.display
    )
    if not where and enc.serviceProvider and enc.serviceProvider.display:
        where = enc.serviceProvider.display
    head = " ".join(part for part in (when or "(no date)", kind) if part)
    return f"{head}{' · ' + where if where else ''} ({enc.status})"


def _condition_line(cond: Condition) -> str:
    line = _concept(cond.code) or "(unnamed condition)"
    code = _code(cond.code)
    if code and code != line:
        line += f" [{code}]"
    verification = _code(cond.verificationStatus)
    if verification and verification != "confirmed":
        line += f" ({verification})"
    onset = _date(cond.onsetDateTime) or (cond.onsetString or "")
    return f"{line} · since {onset}" if onset else line


def _allergy_line(allergy: AllergyIntolerance) -> str:
    parts = [_concept(allergy.code) or "(unnamed substance)"]
    kind = " ".join(x for x in (*(allergy.category or []), allergy.type) if x)
    if kind:
        parts[0] += f" ({kind})"
    if allergy.criticality:
        parts.append(f"criticality {allergy.criticality}")
    reactions = []
    for reaction in allergy.reaction or []:
        shown = ", ".join(_concept(m) for m in reaction.manifestation or [] if _concept(m))
        if shown:
            reactions.append(f"{shown} ({reaction.severity})" if reaction.severity else shown)
    if reactions:
        parts.append("reaction: " + "; ".join(reactions))
    verification = _code(allergy.verificationStatus)
    if verification and verification != "confirmed":
        parts.append(verification)
    return " · ".join(parts)


def _number(value: float | int) -> str:
    if isinstance(value, float):
        text = repr(value)
        return format(value, "f").rstrip("0").rstrip(".") if "e" in text else text
    return str(value)


def _value(obs: Observation) -> str:
    if obs.valueQuantity is not None:
        q = obs.valueQuantity
        number = _number(q.value) if q.value is not None else "?"
        unit = q.unit or q.code or ""
        return f"{q.comparator or ''}{number}{' ' + unit if unit else ''}"
    if obs.valueString:
        return obs.valueString
    if obs.valueCodeableConcept is not None:
        return _concept(obs.valueCodeableConcept)
    if obs.valueInteger is not None:
        return str(obs.valueInteger)
    if obs.valueBoolean is not None:
        return "yes" if obs.valueBoolean else "no"
    if obs.dataAbsentReason is not None:
        return f"no value ({_concept(obs.dataAbsentReason)})"
    return "(no value)"


def _lab_line(obs: Observation) -> str:
    parts = [_concept(obs.code) or "(unnamed test)", _value(obs)]
    flags = [_code(i) for i in obs.interpretation or [] if _code(i) and _code(i) != "N"]
    parts.extend(f"[{flag}]" for flag in flags)
    when = _datetime(obs.effectiveDateTime) or (
        _datetime(obs.effectivePeriod.start) if obs.effectivePeriod else ""
    )
    if when:
        parts.append(when)
    if obs.status and obs.status not in ("final", "amended", "corrected"):
        parts.append(f"({obs.status})")
    return " ".join(parts)


# -- formatting for the room --------------------------------------------------------------


def lab_severity(line: str) -> str:
    """'critical', 'abnormal' or '' from the flags in a lab line."""
    flags = set(_FLAG_RE.findall(line))
    if flags & CRITICAL_FLAGS:
        return "critical"
    if flags & ABNORMAL_FLAGS:
        return "abnormal"
    return ""


def _safe_link(link: str) -> str:
    if urlsplit(link).scheme.lower() not in ("http", "https"):
        raise ValueError(f"patient link must be http(s), got {link!r}")
    return link


def _html_list(items: Iterable[str]) -> str:
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def format_summary(summary: PatientSummary, patient_link: str | None = None) -> tuple[str, str]:
    """(body, formatted_body) for an m.room.message with format org.matrix.custom.html.

    Critical labs are marked in words as well as colour: colour is lost in notifications, in
    the plain body and on screens read in a hurry.
    """
    esc = html.escape
    title = f"患者摘要 Patient summary: {summary.name} ({summary.patient_id})"
    demographics = [
        ("Name", summary.name),
        ("Patient ID", summary.patient_id),
        ("Gender", summary.gender),
        ("Born", summary.birth_date or "不详 unknown"),
    ]
    empty = {
        "Encounters": "无就诊记录 No encounters recorded",
        "Active problems": "无活动性问题记录 No active problems recorded",
        "Allergies": NO_ALLERGIES_TEXT,
        "Recent labs": "无近期检验结果 No recent lab results",
    }
    sections = [
        ("Encounters", summary.encounters),
        ("Active problems", summary.problems),
        ("Allergies", summary.allergies),
        ("Recent labs", summary.labs),
    ]

    text = [title, "", WORDS["Demographics"]]
    text += [f"  {WORDS[label]}: {value}" for label, value in demographics]
    for heading, items in sections:
        text += ["", WORDS[heading]]
        if not items:
            text.append(f"  {empty[heading]}")
        for item in items:
            mark = ""
            if heading == "Recent labs":
                mark = {"critical": "  !! 危急 CRITICAL", "abnormal": "  ! 异常 abnormal"}.get(
                    lab_severity(item), ""
                )
            elif heading == "Allergies" and "criticality high" in item:
                mark = "  !! 高风险 HIGH RISK"
            text.append(f"  - {item}{mark}")

    if patient_link is not None:
        link = _safe_link(patient_link)
        text += ["", f"完整病历 Full record: {link}"]
        html_title = (
            f'<h4>患者摘要 Patient summary: <a href="{esc(link)}">{esc(summary.name)}</a>'
            f" ({esc(summary.patient_id)})</h4>"
        )
    else:
        html_title = f"<h4>{esc(title)}</h4>"

    parts = [html_title, f"<p><strong>{WORDS['Demographics']}</strong></p>"]
    parts.append(_html_list(f"{esc(WORDS[label])}: {esc(value)}" for label, value in demographics))
    for heading, items in sections:
        parts.append(f"<p><strong>{esc(WORDS[heading])}</strong></p>")
        if not items:
            parts.append(f"<p><em>{esc(empty[heading])}</em></p>")
            continue
        rendered = []
        for item in items:
            cell = esc(item)
            severity = lab_severity(item) if heading == "Recent labs" else ""
            if severity == "critical":
                cell = (f'<strong><span data-mx-color="#b00020">{cell} — 危急 CRITICAL</span>'
                        "</strong>")
            elif severity == "abnormal":
                cell = f'<span data-mx-color="#b35c00">{cell} — 异常 abnormal</span>'
            elif heading == "Allergies" and "criticality high" in item:
                cell = f'<strong><span data-mx-color="#b00020">{cell}</span></strong>'
            rendered.append(cell)
        parts.append(_html_list(rendered))
    if patient_link is not None:
        parts.append(f'<p><a href="{esc(patient_link)}">完整病历 Full record</a></p>')
    return "\n".join(text), "".join(parts)
