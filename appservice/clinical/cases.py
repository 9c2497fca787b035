"""Patient case (MDT) rooms: opened for one patient, filled with the HIS summary and PACS key
images, closed into an archive the EMR keeps.

``!case open <patient id> [unit ...]`` creates a consult-class room (no-forward, watermarks)
with the requester, pages the on-duty roles of the patient's ward (from ADT, else the FHIR
server's current Encounter: appservice.clinical.locate) and of each named unit into it, and
pins a summary read from the hospital's FHIR server. The room says which ward was found and
how, and everyone who could not be brought in, with the reason. ``!images <accession | study
UID>`` posts rendered key images from the PACS. ``!decision <text>`` records a decision.
``!case close`` archives every message, file and decision as a FHIR Bundle and a PDF, posts
them to the EMR when one is connected, and makes the room read-only.

A case's state lives in the appservice database; closing is resumable (a crash halfway
through closes it again on the next command or restart, with the same archive IDs). A close
that cannot put everything in the archive (a file that cannot be fetched, no font to print
the PDF with) is called off before anything reaches the EMR: the case stays open, the room and
whoever closed it are told what and why, and ``!case close`` tries again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote
from zoneinfo import ZoneInfo

import aiohttp
from mautrix.util.async_db import Database

from appservice.audit_client import AuditClient
from appservice.clinical.archive import Attachment, CaseInfo, CaseMessage, build_bundle, render_pdf
from appservice.clinical.locate import Located, LocateFailed, PatientLocator
from appservice.clinical.pdf_fonts import FontUnavailable
from appservice.clinical.store import ClinicalStore
from appservice.clinical.summary import (
    PatientNotFound,
    SummaryUnavailable,
    fetch_summary,
    format_summary,
)
from appservice.homeserver import Homeserver, HomeserverUnreachable, MatrixCallFailed
from appservice.oncall.service import OncallService
from bridges.dicom.render import DicomRenderError, render
from bridges.dicomweb.client import DicomWebClient, DicomWebError, find_by_reference
from carematrix.audit import actions as A
from carematrix.policy.clinical import ClinicalPolicy
from carematrix.policy.oncall import role_localpart
from carematrix.policy.rooms import ROOM_CLASS_EVENT
from carematrix.rules import Verdict
from carematrix.rules.cases import decide_close_case, decide_open_case
from carematrix.rules.protection import PRIORITY_FIELD

log = logging.getLogger("carematrix.appservice.cases")

CASE_CLASS = "consult"
CASE_FIELD = "org.carematrix.case"  # on the bot's case notices: {"case_id", "kind"}
DECISION_FIELD = "org.carematrix.case.decision"
STUDY_FIELD = "org.carematrix.study"
# Power to invite (and kick) in a case room: the requester and the role accounts, which bring
# in whoever is on duty.
CASE_MEMBER_POWER = 50
# A role account that cannot be brought in, or a FHIR server that cannot say where the patient
# is, for a passing reason (HTTP 5xx, a timeout, no connection) is tried again after these
# pauses before the room is told.
RETRY_PAUSES_SECONDS = (1.0, 3.0)

class CaseError(Exception):
    """A reason to tell the person who typed the command."""


class ArchiveIncomplete(Exception):
    """Something the archive must hold cannot be put in it; the close is called off."""


FILE_MSGTYPES = ("m.image", "m.file", "m.video", "m.audio")


@dataclass(frozen=True)
class Opened:
    """A case room just opened, as the requester is told about it."""

    room_id: str
    name: str  # the patient's
    paged: list[str]  # role IDs
    ward_short: str  # which ward was found and how, or that none was
    unreached: list[str]  # a sentence per role or person who could not be brought in


class CaseStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(
        self, case_id: str, patient_id: str, patient_name: str, room_id: str, opened_by: str, summary: str,
        origin: str | None = None,
    ) -> None:
        await self.db.execute(
            "INSERT INTO clinical_case (case_id, patient_id, patient_name, room_id, state, opened_by, opened_at, "
            "summary, origin) VALUES ($1, $2, $3, $4, 'open', $5, $6, $7, $8)",
            case_id, patient_id, patient_name, room_id, opened_by, int(time.time() * 1000), summary, origin,
        )

    async def by_origin(self, origin: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow("SELECT * FROM clinical_case WHERE origin = $1", origin)
        return dict(row) if row else None

    async def by_room(self, room_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow("SELECT * FROM clinical_case WHERE room_id = $1", room_id)
        return dict(row) if row else None

    async def open_for_patient(self, patient_id: str) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT * FROM clinical_case WHERE patient_id = $1 AND state = 'open' ORDER BY opened_at", patient_id
        )
        return [dict(r) for r in rows]

    async def closing(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.db.fetch("SELECT * FROM clinical_case WHERE state = 'closing'")]

    async def set_state(self, case_id: str, state: str, **fields: Any) -> None:
        sets = ["state = $1"]
        values: list[Any] = [state]
        for name, value in fields.items():
            values.append(value)
            sets.append(f"{name} = ${len(values)}")
        values.append(case_id)
        await self.db.execute(f"UPDATE clinical_case SET {', '.join(sets)} WHERE case_id = ${len(values)}", *values)


class CaseService:
    def __init__(
        self, db: Database, clinical: ClinicalStore, holder: Any, matrix: Homeserver, oncall: OncallService,
        audit: AuditClient, bot_user_id: str, *, fhir_server: str | None, dicomweb: str | None,
        emr_archive: str | None, archive_dir: Path | None, session: aiohttp.ClientSession,
        token: str | None = None,
    ) -> None:
        self.store = CaseStore(db)
        self.clinical = clinical
        self.holder = holder
        self.matrix = matrix
        self.oncall = oncall
        self.audit = audit
        self.bot = bot_user_id
        self.fhir_server = fhir_server
        self.dicomweb = dicomweb
        self.emr_archive = emr_archive
        self.archive_dir = archive_dir
        self.session = session
        # Presented to the FHIR server and the EMR archive.
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        # ADT only until main connects the FHIR server (appservice.clinical.locate).
        self.locator = PatientLocator(clinical, holder, None)
        self._lock = asyncio.Lock()
        # ``!case open`` commands being carried out, by (sender, patient, units): a double tap
        # or a client's retry sends the same command twice within a second.
        self._opening: dict[tuple[str, str, tuple[str, ...]], asyncio.Future[str]] = {}

    @property
    def policy(self) -> ClinicalPolicy | None:
        return self.holder.current.clinical

    async def setup(self) -> None:
        for case in await self.store.closing():
            try:
                await self._finish_close(case)
            except Exception:
                log.exception("resuming the close of case %s failed", case["case_id"])

    # -- commands ----------------------------------------------------------------------

    async def command(self, room_id: str, sender: str, name: str, args: tuple[str, ...]) -> str | None:
        """The reply to a case command, or None when the command says nothing more."""
        try:
            if name == "case" and args[:1] == ("open",) and len(args) >= 2:
                return await self.open_case(sender, args[1], args[2:], room_id)
            if name == "case" and args[:1] == ("close",):
                return await self.close_case(room_id, sender)
            if name == "decision":
                return await self.decide(room_id, sender, " ".join(args))
            if name == "images" and len(args) == 1:
                return await self.post_images(room_id, sender, args[0])
        except CaseError as exc:
            return str(exc)
        except Exception:
            log.exception("!%s %s in %s failed", name, " ".join(args), room_id)
            return (
                f"抱歉，!{name} 在系统端出错，已记录并通知信息科。请重试。"
                f" Sorry, !{name} failed on our side; it has been logged for IT. Please try again."
            )
        return (
            "用法：!case open <患者编号> [科室 ...] · !case close · !decision <内容> · !images <检查号或 Study UID> "
            "Usage: !case open <patient id> [unit ...] · !case close · !decision <text> · "
            "!images <accession number or study UID>"
        )

    async def open_case(self, sender: str, patient_id: str, units: tuple[str, ...], from_room: str) -> str:
        """Open a case room; the same command from the same person while it is still being
        carried out opens no second room (two rooms would split the patient's discussion and
        page the on-duty doctor twice): it is answered with the first one's outcome."""
        key = (sender, patient_id.strip().upper(), tuple(sorted(units)))
        running = self._opening.get(key)
        if running is not None:
            log.info("!case open %s by %s while the same command was being carried out: no second room",
                     patient_id, sender)
            try:
                first = await asyncio.shield(running)
            except CaseError as exc:
                return str(exc)
            except Exception:
                first = ""
            return ("同一命令刚刚已在执行，未重复开立会诊房间。 The same command was already being carried out;"
                    " no second case room was opened. " + first).strip()
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            reply = await self._open_case(sender, patient_id, units, from_room)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a failure nobody else awaits is not logged as lost
            raise
        else:
            future.set_result(reply)
            return reply
        finally:
            del self._opening[key]

    async def _open_case(self, sender: str, patient_id: str, units: tuple[str, ...], from_room: str) -> str:
        policy = self.policy
        if policy is None:
            raise CaseError("会诊房间需要临床策略（clinical policy）。 Case rooms need the clinical policy.")
        verdict = decide_open_case(self.oncall.person(sender), policy.cases.open_positions)
        if not verdict.allowed:
            await self._refuse(sender, verdict, f"case open {patient_id}", from_room, patient_id)
        org = self.oncall.policy
        unknown = [u for u in units if u not in org.units]
        if unknown:
            raise CaseError(
                f"未知科室：{', '.join(unknown)}。请用科室编号（如 cardiology、icu）。"
                f" Unknown unit(s): {', '.join(unknown)}. Name units by their ID (e.g. cardiology, icu)."
            )
        opened = await self._create(sender, patient_id, units, None, None, typed=True)
        lines = [
            f"已为 {opened.name}（{patient_id}）开立会诊房间。"
            f" Case room for {opened.name} ({patient_id}) opened: https://matrix.to/#/{opened.room_id}."
        ]
        lines.append(opened.ward_short)
        if opened.paged:
            lines.append(f"已呼叫 Paged: {', '.join(opened.paged)}.")
        lines.extend(opened.unreached)
        return " ".join(lines)

    async def open_for_order(self, requester: str | None, patient_id: str, units: tuple[str, ...], origin: str, what: str) -> None:
        """An HIS consult order opens the case room by itself (once per order): the
        ordering doctor is invited, the consulted units' on-duty roles are paged."""
        if await self.store.by_origin(origin) is not None:
            return
        await self._create(requester, patient_id, units, origin, what)

    async def _create(
        self, requester: str | None, patient_id: str, units: tuple[str, ...], origin: str | None, order: str | None,
        *, typed: bool = False,
    ) -> Opened:
        """``typed``: a person gave the patient ID; one neither the EMR nor the ADT feed knows
        is refused, not given a room (that would be filed in the EMR under a patient the
        hospital does not have). An EMR that cannot be asked does not refuse: the room opens
        and says its summary is missing."""
        policy = self.policy
        assert policy is not None
        summary_text, summary_html, name, not_found = await self._summary(patient_id)
        known = await self.clinical.patient(patient_id) or {}
        if typed and not_found and not known:
            raise CaseError(
                f"电子病历和住院登记中都没有患者编号 '{patient_id}'，未开立会诊房间。"
                "请用腕带或 HIS 上的患者编号或病历号（不是姓名），例如 !case open P20261101。"
                f" Neither the EMR nor admissions know a patient '{patient_id}'; no case room was opened."
                " Give the patient ID or MRN from the wristband or the HIS (not the name), e.g. !case open P20261101."
            )
        name = name or known.get("name") or patient_id
        case_id = f"case-{datetime.now(UTC):%Y%m%d}-{uuid.uuid4().hex[:8]}"
        link = policy.link("patient", patient_id=patient_id)
        located, failed = await self._locate(patient_id)
        roles = self._roles(located, units)
        # The role accounts invite whoever is on duty (and, at a shift change, who comes next).
        powers = {self.matrix.uid(role_localpart(r)): CASE_MEMBER_POWER for r in roles}
        if requester:
            powers[requester] = CASE_MEMBER_POWER
        created = await self.matrix.call("POST", "/_matrix/client/v3/createRoom", {
            "name": policy.cases.room_name.format(patient_name=name, patient_id=patient_id),
            "topic": f"患者会诊 Patient case {case_id} · {name} ({patient_id})" + (f" · {link}" if link else ""),
            "preset": "private_chat", "visibility": "private", "invite": [requester] if requester else [],
            # The case ID keeps two cases opened in the same millisecond from hashing to one
            # room ID (room version 12).
            "creation_content": {"m.federate": False, CASE_FIELD: {"case_id": case_id}},
            "initial_state": [
                {"type": ROOM_CLASS_EVENT, "state_key": "", "content": {"class": CASE_CLASS}},
                {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "shared"}},
            ],
            "power_level_content_override": {
                # The bot created the room: from room version 12 creators hold power implicitly.
                "users": powers, "events_default": 0, "state_default": 50,
                "invite": CASE_MEMBER_POWER, "kick": CASE_MEMBER_POWER, "ban": 50, "redact": 50,
            },
        })
        room_id = str(created["room_id"])
        await self.store.add(case_id, patient_id, name, room_id, requester or self.bot, summary_text, origin)
        if order:
            who = self._name_of(requester) if requester else "the HIS"
            who_zh = self._name_of(requester) if requester else "HIS"
            body = f"由 {who_zh} 的 HIS 会诊医嘱 {order} 开立。 Opened from the HIS consult order {order} by {who}."
            await self._send(room_id, {"msgtype": "m.notice", "body": body},
                             f"{case_id}-order")
        pinned = await self._send(room_id, {
            "msgtype": "m.notice", "body": summary_text, "format": "org.matrix.custom.html",
            "formatted_body": summary_html, CASE_FIELD: {"case_id": case_id, "kind": "summary"},
        }, f"{case_id}-summary")
        await self.matrix.call(
            "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.pinned_events", {"pinned": [pinned]}
        )
        ward_long, ward_short = self._ward_sentences(patient_id, located, failed, roles, units)
        await self._send(room_id, {"msgtype": "m.notice", "body": ward_long}, f"{case_id}-ward")
        paged, unreached = await self._page_roles(
            case_id, room_id, roles, pinned, requester, f"patient case {name} ({patient_id})",
        )
        await self.audit.record(
            actor=requester or self.bot, action="appservice.case.opened", object=case_id, room=room_id,
            patient=patient_id, outcome="success" if not unreached else "partial", process="appservice",
            details={"units": list(units), "roles": paged, "order": origin,
                     "ward": located.ward if located else None, "ward_source": located.source if located else None,
                     "unreached": len(unreached)},
        )
        return Opened(room_id, name, paged, ward_short, unreached)

    async def _refuse(self, sender: str, verdict: Verdict, action: str, room_id: str, patient: str | None) -> NoReturn:
        """A refused case command is on record with its rule, like every refusal; the reply
        names the rule."""
        log.info("policy denial rule=%s user=%s action=%s", verdict.rule, sender, action)
        await self.audit.record(
            actor=sender, action=A.POLICY_DENIED, object=action, outcome=A.DENIED, rule=verdict.rule,
            room=room_id, patient=patient, process="appservice",
        )
        raise CaseError(verdict.message())

    async def _locate(self, patient_id: str) -> tuple[Located | None, LocateFailed | None]:
        """The patient's ward; a FHIR server that fails for a passing reason is asked again
        after a pause before the case opens without a ward team."""
        for pause in (*RETRY_PAUSES_SECONDS, None):
            try:
                return await self.locator.ward_of(patient_id), None
            except LocateFailed as exc:
                log.warning("case for %s: ward not found: %s", patient_id, exc)
                if not exc.transient or pause is None:
                    return None, exc
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    def _roles(self, located: Located | None, units: tuple[str, ...]) -> list[str]:
        """The ward's roles, then each named unit's on-duty roles, each once."""
        policy, oncall = self.policy, self.oncall.oncall
        ward = policy.wards.get(located.ward) if policy and located else None
        roles: list[str] = list(ward.roles.values()) if ward else []
        for unit in units:
            roles.extend(r.id for r in (oncall.roles.values() if oncall else []) if r.unit == unit)
        return list(dict.fromkeys(roles))

    def _ward_sentences(
        self, patient_id: str, located: Located | None, failed: LocateFailed | None, roles: list[str],
        units: tuple[str, ...],
    ) -> tuple[str, str]:
        """(what the case room is told, the short form for the requester's reply)."""
        policy = self.policy
        ward = policy.wards.get(located.ward) if policy and located else None
        if located is not None and ward is not None:
            detail = located.how + (f" {located.source.removeprefix('FHIR ')}" if located.source != "ADT" else "")
            short = f"病区 {located.ward}。 Ward {located.ward} ({located.how})."
            team = [r for r in ward.roles.values() if r in roles]
            pages = f"its on-duty roles are paged here: {', '.join(team)}." if team else "the policy names no on-duty roles for it."
            pages_zh = f"已在此呼叫其值班角色：{', '.join(team)}。" if team else "策略未为其设值班角色。"
            return f"病区 {located.ward}：{pages_zh} Ward {located.ward} ({detail}): {pages}", short
        if failed is not None:
            why = f"ADT has not placed the patient and the EMR could not be asked ({failed})"
        else:
            why = ("no ADT message has placed the patient and the EMR has no current encounter on a ward "
                   "of this hospital's clinical policy")
        then = ("" if units else " To bring a team in, invite its on-duty role account (e.g. "
                "\"Cardiology – attending on duty\") and mention it in a message.")
        then_zh = "" if units else "如需某团队加入，请邀请其值班角色账号（如“心内科 · 主班医生 (值班)”）并在消息中提及。"
        text = (
            f"未找到 {patient_id} 所在病区，因此未呼叫病区团队。{then_zh}"
            f" No ward found for {patient_id}: {why}, so no ward team is paged.{then}"
        )
        return text, (
            f"未找到 {patient_id} 所在病区：未呼叫病区团队（详见会诊房间）。"
            f" No ward found for {patient_id}: no ward team paged (see the case room)."
        )

    async def _summary(self, patient_id: str) -> tuple[str, str, str, bool]:
        """(plain, html, patient name, whether the FHIR server said it has no such patient) —
        an unavailable summary is said plainly, not hidden."""
        if not self.fhir_server:
            text = f"无患者摘要：未连接 FHIR 服务器。患者 {patient_id}。 No patient summary: no FHIR server is connected. Patient {patient_id}."
            return text, text, "", False
        policy = self.policy
        link = policy.link("patient", patient_id=patient_id) if policy else None
        try:
            summary = await asyncio.to_thread(fetch_summary, self.fhir_server, patient_id, self.auth or None)
        except SummaryUnavailable as exc:
            text = f"无法获取 {patient_id} 的患者摘要。 No patient summary for {patient_id}: {exc}"
            return text, text, "", isinstance(exc, PatientNotFound)
        plain, html = format_summary(summary, link)
        return plain, html, summary.name, False

    async def _page_roles(
        self, case_id: str, room_id: str, roles: list[str], event_id: str, requester: str | None, subject: str,
    ) -> tuple[list[str], list[str]]:
        """Each role is paged into the room on behalf of the requester (who hears how the
        escalation goes), as urgent: a consult, not an alarm (the policy's steps may raise it).
        (roles paged, a sentence per role or person not brought in)."""
        paged: list[str] = []
        unreached: list[str] = []
        for role_id in roles:
            pauses = iter(RETRY_PAUSES_SECONDS)
            while True:
                try:
                    page = await self.oncall.page_for_system(
                        f"{case_id}-{role_id}", role_id, room_id, event_id, requester or self.bot,
                        priority="urgent", subject=subject, unreached=unreached,
                    )
                except (MatrixCallFailed, HomeserverUnreachable) as exc:
                    passing = exc.transient
                    pause = next(pauses, None) if passing else None
                    log.warning("case %s: role %s not brought into %s%s: %s", case_id, role_id, room_id,
                                "; trying again" if pause is not None else "", exc)
                    if pause is not None:
                        await asyncio.sleep(pause)
                        continue
                    text = (
                        f"无法将 {role_id} 拉入此房间，此处未呼叫其值班人员。"
                        f" Could not bring {role_id} into this room: {exc.reason}. Nobody on duty for it is paged here."
                    )
                    unreached.append(text)
                    await self._send(room_id, {"msgtype": "m.notice", "body": text}, f"{case_id}-{role_id.replace('/', '-')}-unreached")
                    break
                if page is not None:
                    paged.append(role_id)
                break
        return paged, unreached

    async def decide(self, room_id: str, sender: str, text: str) -> str | None:
        case = await self._open_case_in(room_id)
        if not text.strip():
            raise CaseError("用法：!decision <决定内容> Usage: !decision <what was decided>")
        who = self.oncall.name(self.oncall.staff_of(sender) or sender)
        await self._send(room_id, {
            "msgtype": "m.notice", "body": f"决定 Decision ({who}): {text.strip()}",
            DECISION_FIELD: {"by": sender, "text": text.strip()}, CASE_FIELD: {"case_id": case["case_id"], "kind": "decision"},
        }, None)
        return None

    async def _open_case_in(self, room_id: str) -> dict[str, Any]:
        case = await self.store.by_room(room_id)
        if case is None:
            raise CaseError(
                "这不是患者会诊房间（用 !case open <患者编号> 开立）。"
                " This is not a patient case room (open one with !case open <patient id>)."
            )
        if case["state"] != "open":
            raise CaseError(f"会诊 {case['case_id']} 已结束。 Case {case['case_id']} is closed.")
        return case

    # -- PACS --------------------------------------------------------------------------

    async def post_images(self, room_id: str, sender: str, reference: str) -> str:
        case = await self._open_case_in(room_id)
        if not self.dicomweb:
            raise CaseError("未连接 PACS（DICOMweb）。 No PACS is connected (DICOMweb).")
        async with DicomWebClient(self.dicomweb, session=self.session) as pacs:
            try:
                studies = await pacs.find_studies(**find_by_reference(reference))
            except DicomWebError as exc:
                raise CaseError(f"PACS 无应答。 The PACS did not answer: {exc}") from exc
            if not studies:
                raise CaseError(f"PACS 中没有检查 {reference}。 No study {reference} in the PACS.")
            study = studies[0]
            if study.patient_id and study.patient_id != case["patient_id"]:
                raise CaseError(
                    f"检查 {reference} 属于患者 {study.patient_id}，不是本会诊的患者 {case['patient_id']}。"
                    f" Study {reference} belongs to patient {study.patient_id}, not to this case's patient {case['patient_id']}."
                )
            images = await self._key_images(pacs, study.study_uid)
        count = await self._post_study(room_id, case, study.study_uid, f"cmd-{uuid.uuid4().hex[:8]}", images)
        await self.audit.record(
            actor=sender, action="appservice.case.images", object=study.study_uid, room=room_id,
            patient=case["patient_id"], outcome="success", process="appservice", details={"images": count},
        )
        return (
            f"已发布 {study.description or '该检查'} 的 {count} 张关键图像。"
            f" {count} key image(s) of {study.description or 'the study'} posted."
        )

    async def on_study(self, patient_id: str, study_uid: str, key: str) -> None:
        """An ImagingStudy notification: key images go to the patient's open case rooms
        (fetched from the PACS once, however many rooms)."""
        cases = await self.store.open_for_patient(patient_id) if self.dicomweb else []
        if not cases:
            return
        async with DicomWebClient(self.dicomweb or "", session=self.session) as pacs:
            images = await self._key_images(pacs, study_uid)
        for case in cases:
            await self._post_study(case["room_id"], case, study_uid, key, images)

    async def _key_images(self, pacs: DicomWebClient, study_uid: str) -> list[Any]:
        limit = self.policy.cases.key_images if self.policy else 4
        try:
            return await pacs.key_images(study_uid, limit=limit)
        except DicomWebError as exc:
            raise CaseError(f"PACS 无应答。 The PACS did not answer: {exc}") from exc

    async def _post_study(
        self, room_id: str, case: dict[str, Any], study_uid: str, key: str, images: list[Any]
    ) -> int:
        policy = self.policy
        link = policy.link("study", study_uid=study_uid, accession="", patient_id=case["patient_id"]) if policy else None
        posted = 0
        for series, instance, data in images:
            try:
                image = await asyncio.to_thread(render, data, "PNG", 1024)
            except DicomRenderError as exc:
                await self._send(room_id, {"msgtype": "m.notice", "body": f"图像 {instance.sop_uid} 无法显示。 Image {instance.sop_uid} cannot be shown: {exc}"}, None)
                continue
            name = f"{series.modality or 'image'}-{series.number or 0}-{instance.number or 0}.png"
            mxc = await self.matrix.upload(image.data, image.mimetype, name)
            caption = f"{series.modality} {series.description or ''} · {image.description}".strip()
            content: dict[str, Any] = {
                "msgtype": "m.image", "body": caption or name, "filename": name, "url": mxc,
                "info": {"mimetype": image.mimetype, "w": image.width, "h": image.height, "size": len(image.data)},
                STUDY_FIELD: {"study_uid": study_uid, "series_uid": series.series_uid, "sop_uid": instance.sop_uid},
                CASE_FIELD: {"case_id": case["case_id"], "kind": "image"},
            }
            # One image per (case, instance, request): a redelivery does not post it twice.
            txn = "img-" + hashlib.sha256(f"{case['case_id']}|{instance.sop_uid}|{key}".encode()).hexdigest()[:24]
            await self._send(room_id, content, txn)
            posted += 1
        if link and posted:
            await self._send(room_id, {"msgtype": "m.notice", "body": f"在 PACS 阅片器中打开完整检查 Open the full study in the PACS viewer: {link}"},
                             "lnk-" + hashlib.sha256(f"{case['case_id']}|{study_uid}|{key}".encode()).hexdigest()[:24])
        return posted

    # -- closing -----------------------------------------------------------------------

    async def close_case(self, room_id: str, sender: str) -> str | None:
        case = await self.store.by_room(room_id)
        if case is None:
            raise CaseError("这不是患者会诊房间。 This is not a patient case room.")
        if case["state"] == "closed":
            raise CaseError(f"会诊 {case['case_id']} 已经结束。 Case {case['case_id']} is already closed.")
        policy = self.policy
        open_positions = policy.cases.open_positions if policy is not None else frozenset()
        verdict = decide_close_case(sender, case["opened_by"], self.oncall.person(sender), open_positions)
        if not verdict.allowed:
            await self._refuse(sender, verdict, f"case close {case['case_id']}", room_id, case["patient_id"])
        async with self._lock:
            if case["state"] == "open":
                await self.store.set_state(case["case_id"], "closing", closed_by=sender, closed_at=int(time.time() * 1000))
                case = await self.store.by_room(room_id) or case
            await self._finish_close(case)
        return None

    async def _finish_close(self, case: dict[str, Any]) -> None:
        room_id = case["room_id"]
        info = CaseInfo(
            case_id=case["case_id"], patient_id=case["patient_id"], patient_name=case["patient_name"],
            room_id=room_id, title=f"Case {case['patient_name']} ({case['patient_id']})",
            opened_at=self._dt(case["opened_at"]), opened_by=self._name_of(case["opened_by"]),
            closed_at=self._dt(case["closed_at"]), closed_by=self._name_of(case["closed_by"] or ""),
            summary=case["summary"],
        )
        try:
            messages = await self._collect(room_id, case["case_id"])
            pdf = await asyncio.to_thread(render_pdf, info, messages)
        except FontUnavailable as exc:
            await self._close_failed(case, f"the PDF cannot be printed: {exc}")
            return
        except ArchiveIncomplete as exc:
            await self._close_failed(case, str(exc))
            return
        bundle = build_bundle(info, messages)
        stored = self._store_archive(info.case_id, bundle, pdf)
        emr = await self._post_to_emr(info, bundle, pdf)
        mxc = await self.matrix.upload(pdf, "application/pdf", f"{info.case_id}.pdf")
        await self._send(room_id, {
            "msgtype": "m.file", "body": f"{info.case_id}.pdf", "filename": f"{info.case_id}.pdf", "url": mxc,
            "info": {"mimetype": "application/pdf", "size": len(pdf)},
            CASE_FIELD: {"case_id": info.case_id, "kind": "archive"},
        }, f"{info.case_id}-archive-pdf")
        where = f" and sent to the EMR ({emr})" if emr else ""
        where_zh = "并已发送至电子病历" if emr else ""
        await self._send(room_id, {
            "msgtype": "m.notice",
            "body": f"会诊 {info.case_id} 已由 {info.closed_by} 结束：{len(messages)} 条消息已归档为 FHIR Bundle 和 PDF"
                    f"{where_zh}。本房间现为只读。 "
                    f"Case {info.case_id} closed by {info.closed_by}: {len(messages)} messages archived as a FHIR "
                    f"Bundle and a PDF{where}. This room is now read-only.",
            CASE_FIELD: {"case_id": info.case_id, "kind": "closed", "bundle_entries": len(bundle.get("entry", []))},
        }, f"{info.case_id}-closed")
        await self._make_read_only(room_id)
        await self.oncall.end_pages_in(room_id, f"case {info.case_id} closed")
        await self.store.set_state(info.case_id, "closed", archive=json.dumps({"dir": stored, "emr": emr}))
        await self.audit.record(
            actor=case["closed_by"] or self.bot, action="appservice.case.closed", object=info.case_id, room=room_id,
            patient=info.patient_id, outcome="success", process="appservice",
            details={"messages": len(messages), "emr": emr, "pdf_sha256": hashlib.sha256(pdf).hexdigest()},
        )

    async def _close_failed(self, case: dict[str, Any], reason: str) -> None:
        """Nothing has gone to the EMR yet: reopen the case and say why, in the room and to
        whoever asked for the close (mentioned, so it reaches them as a notification)."""
        requester = case["closed_by"] or case["opened_by"]
        await self.store.set_state(case["case_id"], "open", closed_by=None, closed_at=None)
        log.warning("case %s not closed: %s", case["case_id"], reason)
        await self._send(case["room_id"], {
            "msgtype": "m.notice",
            "body": f"{self._name_of(requester)}：会诊 {case['case_id']} 未能结束，未向电子病历提交任何内容，会诊仍保持开放。"
                    "问题解决后（或从房间移除该文件后）请再次发送 !case close。 "
                    f"{self._name_of(requester)}: case {case['case_id']} was NOT closed — {reason}. Nothing was "
                    "filed in the EMR and the case stays open. Send !case close again once this is resolved "
                    "(or after removing the file from the room).",
            "m.mentions": {"user_ids": [requester]},
            CASE_FIELD: {"case_id": case["case_id"], "kind": "close_failed"},
        }, None)
        await self.audit.record(
            actor=requester, action="appservice.case.closed", object=case["case_id"], room=case["room_id"],
            patient=case["patient_id"], outcome="failure", process="appservice", details={"reason": reason},
        )

    def _name_of(self, user_id: str) -> str:
        staff = self.oncall.staff_of(user_id) if user_id else None
        return self.oncall.name(staff) if staff else (user_id or "?")

    async def _collect(self, room_id: str, case_id: str) -> list[CaseMessage]:
        """Every message of the room in order, files with their original bytes."""
        out: list[CaseMessage] = []
        token: str | None = None
        while True:
            params = f"?dir=f&limit=500{'&from=' + quote(token) if token else ''}"
            page = await self.matrix.call("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/messages{params}")
            for event in page.get("chunk", []):
                message = await self._case_message(event, case_id)
                if message is not None:
                    out.append(message)
            token = page.get("end")
            if not token or not page.get("chunk"):
                return out

    async def _case_message(self, event: dict[str, Any], case_id: str) -> CaseMessage | None:
        if event.get("type") != "m.room.message":
            return None
        content = event.get("content") or {}
        case_meta = content.get(CASE_FIELD) or {}
        if case_meta.get("kind") in ("archive", "closed"):
            return None
        msgtype = content.get("msgtype")
        body = str(content.get("body", ""))
        if not body and msgtype not in ("m.image", "m.file"):
            return None  # redacted or burnt
        sender = str(event.get("sender"))
        staff = self.oncall.staff_of(sender) or ""
        kind = "text"
        attachment = None
        sent = self._dt(int(event.get("origin_server_ts", 0)))
        if DECISION_FIELD in content:
            kind = "decision"
            body = str(content[DECISION_FIELD].get("text") or body)
            decider = str(content[DECISION_FIELD].get("by") or sender)
            sender, staff = decider, self.oncall.staff_of(decider) or ""
        elif msgtype in FILE_MSGTYPES:
            kind = "image" if msgtype == "m.image" else "file"
            attachment = await self._attachment(content, body, sender, sent, case_id)
        elif msgtype == "m.notice":
            kind = "notice"
        return CaseMessage(
            event_id=str(event.get("event_id")), sender=sender, sender_name=self._plain_name(sender, staff),
            staff_number=staff, sent=sent, kind=kind, body=body, attachment=attachment,
        )

    def _plain_name(self, user_id: str, staff: str) -> str:
        """The name alone: the archive adds the staff number itself (once)."""
        person = self.oncall.person(user_id) if staff else None
        if person is not None and person.name:
            return str(person.name)
        if staff:
            return self.oncall.name(staff)
        return "CareMatrix" if user_id == self.bot else user_id

    async def _attachment(
        self, content: dict[str, Any], body: str, sender: str, sent: datetime, case_id: str
    ) -> Attachment:
        """The file's complete original bytes, or ArchiveIncomplete naming it and the reason."""
        filename = str(content.get("filename") or body or "file")
        info = content.get("info")
        if not isinstance(info, dict):
            info = {}
        what = f'the file "{filename}" posted by {self._name_of(sender)} at {sent:%Y-%m-%d %H:%M}'
        url = content.get("url")
        if not isinstance(url, str) or not url.startswith("mxc://"):
            reason = "it has no downloadable address (an encrypted or malformed upload)"
            raise ArchiveIncomplete(f"{what} could not be archived: {reason}")
        try:
            data = await self.matrix.download(url)
        except MatrixCallFailed as exc:
            error = exc.body.get("error") if isinstance(exc.body, dict) else None
            detail = f"{exc.errcode or 'HTTP ' + str(exc.status)}{': ' + str(error) if error else ''}"
            raise ArchiveIncomplete(f"{what} could not be downloaded ({detail})") from exc
        except HomeserverUnreachable as exc:
            raise ArchiveIncomplete(f"{what} could not be downloaded ({exc.reason})") from exc
        log.info("case %s: archived %s (%d bytes)", case_id, url, len(data))
        return Attachment(filename=filename, mimetype=str(info.get("mimetype") or "application/octet-stream"), data=data)

    def _store_archive(self, case_id: str, bundle: dict, pdf: bytes) -> str | None:
        if self.archive_dir is None:
            return None
        folder = self.archive_dir / case_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "bundle.json").write_text(json.dumps(bundle, ensure_ascii=False, indent=1), encoding="utf-8")
        (folder / "case.pdf").write_bytes(pdf)
        return str(folder)

    async def _post_to_emr(self, info: CaseInfo, bundle: dict, pdf: bytes) -> str | None:
        """The Bundle and the PDF (as a DocumentReference) go to the EMR; a conditional create
        on the case identifier keeps a resumed close from filing them twice."""
        if not self.emr_archive:
            return None
        ident = f"{info.identifier_system}|{info.case_id}"
        document = {
            "resourceType": "DocumentReference", "status": "current",
            "identifier": [{"system": info.identifier_system, "value": info.case_id}],
            "type": {"text": "MDT case discussion"},
            "subject": {"identifier": {"system": "urn:carematrix:mrn", "value": info.patient_id}, "display": info.patient_name},
            "date": info.closed_at.isoformat(),
            "description": info.title,
            "content": [{"attachment": {
                "contentType": "application/pdf", "data": base64.b64encode(pdf).decode(),
                "title": f"{info.case_id}.pdf", "size": len(pdf),
                "hash": base64.b64encode(hashlib.sha1(pdf).digest()).decode(),  # noqa: S324 - FHIR Attachment.hash is SHA-1
            }}],
        }
        locations = []
        for kind, resource in (("Bundle", bundle), ("DocumentReference", document)):
            async with self.session.post(
                f"{self.emr_archive}/{kind}", json=resource,
                headers={"Content-Type": "application/fhir+json", "If-None-Exist": f"identifier={ident}", **self.auth},
            ) as resp:
                if resp.status >= 400:
                    raise CaseError(f"The EMR refused the archive {kind} (HTTP {resp.status}); the case stays open for another try.")
                locations.append(resp.headers.get("Location") or kind)
        return ", ".join(locations)

    async def _make_read_only(self, room_id: str) -> None:
        path = f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.power_levels"
        levels = await self.matrix.call("GET", path)
        levels["users"] = {u: p for u, p in (levels.get("users") or {}).items() if u == self.bot}
        levels["events_default"] = 100
        levels["invite"] = 100
        levels.setdefault("events", {})["m.reaction"] = 100
        await self.matrix.call("PUT", path, levels)

    async def _send(self, room_id: str, content: dict[str, Any], txn: str | None) -> str:
        content.setdefault(PRIORITY_FIELD, "routine")
        txn = txn or uuid.uuid4().hex
        sent = await self.matrix.call(
            "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/{quote(txn)}", content
        )
        return str(sent.get("event_id", ""))

    def _dt(self, millis: int | None) -> datetime:
        """In the hospital's time zone: the archive is read by people on the ward."""
        zone_name = self.oncall.oncall.timezone if self.oncall.oncall else "UTC"
        try:
            zone: Any = ZoneInfo(zone_name)
        except (KeyError, ValueError):
            zone = UTC
        return datetime.fromtimestamp((millis or 0) / 1000, zone)
