"""Synapse module: the tamper-evident audit trail (docs/audit.md).

Load it before the policy module in homeserver.yaml: the policy module records message
sends and policy denials through the writer this module creates. This module records
logins, logouts, room creation, membership and uploads itself, reads the request log for
admin API use, accepts records from the appservice, answers
auditors' searches, and signs checkpoints of the chain.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from synapse.module_api import EventBase, ModuleApi, SynapseRequest
from synapse.module_api.errors import ConfigError

from carematrix import identity
from carematrix.audit import actions as A
from carematrix.audit.checkpoint import (
    export_verify_key,
    load_or_create_signing_key,
    make_checkpoint,
)
from carematrix.audit.matrix_events import record_for_event
from carematrix.audit.people import resolve_actor
from carematrix.audit.record import AuditRecord, AuditRecordInvalid, parse_time
from carematrix.audit.search import AuditQuery, AuditQueryInvalid, query_record, render, search
from synapse_modules import access_log, hs_schema, media_audit, policy_source
from synapse_modules.adapter.auth import install_login_observer
from synapse_modules.adapter.events import install_event_check
from synapse_modules.async_resource import AsyncJsonResource, body_of
from synapse_modules.audit_writer import AuditWriter

log = logging.getLogger(__name__)

RECORDS_PATH = "/_synapse/client/carematrix/audit/records"
SEARCH_PATH = "/_synapse/client/carematrix/audit/search"
AUDITOR_ROLE = "auditor"
POLICY_RELOAD_MS = 2000  # staff-list edits (who is an auditor) apply within this long
FORMATS = {"json": "application/json", "csv": "text/csv", "fhir": "application/fhir+json", "table": "text/plain"}


@dataclass(frozen=True)
class AuditModuleConfig:
    database: str
    policy_dir: Path
    signing_key_path: Path
    verify_key_path: Path
    appservice_token: str
    checkpoint_interval_seconds: float
    syslog_host: str | None
    syslog_port: int
    syslog_spool: Path | None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AuditModuleConfig:
        allowed = {
            "database", "policy_dir", "signing_key_path", "verify_key_path", "appservice_token",
            "checkpoint_interval_seconds", "syslog",
        }
        unknown = set(config) - allowed
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}; valid keys: {', '.join(sorted(allowed))}")
        database = config.get("database")
        if database not in ("sqlite", "postgres"):
            raise ValueError(f"'database' must be sqlite or postgres (the homeserver's database), got {database!r}")
        for key in ("policy_dir", "signing_key_path", "verify_key_path", "appservice_token"):
            if not isinstance(config.get(key), str) or not config[key]:
                raise ValueError(f"'{key}' is required")
        interval = config.get("checkpoint_interval_seconds", 60)
        if not isinstance(interval, int | float) or not 1 <= interval <= 86400:
            raise ValueError(f"'checkpoint_interval_seconds' must be 1..86400, got {interval!r}")
        syslog = config.get("syslog") or {}
        if not isinstance(syslog, dict) or set(syslog) - {"host", "port", "spool"}:
            raise ValueError("'syslog' takes host, port (TCP, RFC 6587 framing) and spool (a file path)")
        if syslog and not (isinstance(syslog.get("host"), str) and isinstance(syslog.get("spool"), str)):
            raise ValueError("'syslog' needs host and spool")
        policy_source.load_at_config(config["policy_dir"])
        return cls(
            database=database,
            policy_dir=Path(config["policy_dir"]),
            signing_key_path=Path(config["signing_key_path"]),
            verify_key_path=Path(config["verify_key_path"]),
            appservice_token=config["appservice_token"],
            checkpoint_interval_seconds=float(interval),
            syslog_host=syslog.get("host"),
            syslog_port=int(syslog.get("port", 6514)),
            syslog_spool=Path(syslog["spool"]) if syslog else None,
        )


class CareMatrixAudit:
    def __init__(self, config: AuditModuleConfig, api: ModuleApi) -> None:
        self._config = config
        self._api = api
        self.process = api.worker_name or "main"
        hs_schema.gate(api).start()
        self.writer = AuditWriter(api, config.database, self.process)
        self._policy = policy_source.keep_fresh(api, config.policy_dir, POLICY_RELOAD_MS)
        self._signing_key = load_or_create_signing_key(config.signing_key_path)
        if not config.verify_key_path.exists():
            config.verify_key_path.write_text(export_verify_key(self._signing_key) + "\n")
        install_event_check("carematrix_audit", self.check_event_allowed, records=True)
        # Logins (success and failure, with user, device and address) come from the login
        # servlet (synapse_modules/adapter/auth.py); Synapse's own on_user_login hook knows
        # neither failures nor the device.
        install_login_observer(self.on_login_request)
        api.register_password_auth_provider_callbacks(on_logged_out=self.on_logged_out)
        api.register_web_resource(RECORDS_PATH, AsyncJsonResource(api, "carematrix_audit_http", post=self._submit_records))
        api.register_web_resource(SEARCH_PATH, AsyncJsonResource(api, "carematrix_audit_http", get=self._search))
        access_log.install(self.writer.record_soon, self.process)
        media_audit.record_uploads(self.writer)
        if api.should_run_background_tasks():
            api.looping_background_call(
                self._checkpoint, config.checkpoint_interval_seconds * 1000, desc="carematrix_audit_checkpoint"
            )
            if config.syslog_host and config.syslog_spool:
                self._start_syslog(config)

    @staticmethod
    def parse_config(config: dict[str, Any]) -> AuditModuleConfig:
        try:
            return AuditModuleConfig.from_config(config or {})
        except ValueError as exc:
            raise ConfigError(f"CareMatrix audit module: {exc}") from exc

    # -- records from Synapse callbacks --------------------------------------------------

    async def check_event_allowed(self, event: EventBase) -> bool:
        """Membership and room creation are recorded here, before the event is stored, after
        every check that may refuse it. (Other events are recorded by the policy module once
        its checks pass.)"""
        if event.type not in ("m.room.member", "m.room.create") or not self._api.is_mine(event.sender):
            return True
        record = record_for_event(
            event_type=event.type, sender=event.sender, room_id=event.room_id, event_id=event.event_id,
            state_key=event.get_state_key(), content=event.content, process=self.process,
        )
        try:
            await self.writer.record(record)
        except Exception:
            log.exception("audit record for %s could not be written; refusing the event", event.event_id)
            return False
        return True

    async def on_login_request(
        self, request: Any, submission: dict, result: dict | None, error: BaseException | None
    ) -> None:
        """Every /login attempt: who (as typed), from where, with which device, and how it
        ended. Successful logins are on record before the client gets its token."""
        address = request.getClientAddress().host
        if result is not None:
            user = str(result.get("user_id", ""))
            await self.writer.record(
                AuditRecord(
                    actor=user, action=A.AUTH_LOGIN, object=user, source=address, process=self.process,
                    details={"device": str(result.get("device_id", "")), "type": str(submission.get("type", ""))},
                )
            )
            return
        claimed = login_identity(submission, self._api.server_name)
        code = getattr(error, "errcode", None) or type(error).__name__
        self.writer.record_soon(
            AuditRecord(
                actor=claimed or "anonymous", action=A.AUTH_LOGIN_FAILED, object=claimed or "login",
                outcome=A.DENIED if getattr(error, "code", 0) in (401, 403) else A.FAILURE,
                source=address, process=self.process,
                details={"device": str(submission.get("device_id", "")), "type": str(submission.get("type", "")), "error": str(code)},
            )
        )

    async def on_logged_out(self, user_id: str, device_id: str | None, access_token: str) -> None:
        await self.writer.record(
            AuditRecord(actor=user_id, action=A.AUTH_LOGOUT, object=user_id, process=self.process, details={"device": device_id or ""})
        )

    async def _checkpoint(self) -> None:
        # A checkpoint due before the tables are upgraded (a slow start) waits for them.
        await self.writer.ready()
        await self._api.run_db_interaction(
            "carematrix_audit_checkpoint", make_checkpoint, self._config.database, self._signing_key
        )

    def _start_syslog(self, config: AuditModuleConfig) -> None:
        from synapse_modules.audit_spool import Forwarder, Spool, fill_from_log
        from synapse_modules.audit_syslog import TcpTransport, format_record

        assert config.syslog_host and config.syslog_spool
        spool = Spool(config.syslog_spool)
        forwarder = Forwarder(spool, TcpTransport(config.syslog_host, config.syslog_port))
        hostname = socket.gethostname()
        server = self._api.server_name

        def formatter(stored: Any) -> bytes:
            return format_record(stored, hostname, server)

        async def fill() -> None:
            await self.writer.ready()
            while await self._api.run_db_interaction(
                "carematrix_audit_spool", fill_from_log, config.database, spool, formatter
            ):
                pass
            await self._api.defer_to_thread(forwarder.send_pending)

        self._api.looping_background_call(fill, 1000, desc="carematrix_audit_syslog")

    # -- HTTP: records from the appservice, searches by auditors --------------------------

    async def _submit_records(self, request: SynapseRequest) -> tuple[int, Any]:
        auth = request.getHeader("Authorization") or ""
        if auth != f"Bearer {self._config.appservice_token}":
            return 403, {"errcode": "M_FORBIDDEN", "error": "only the CareMatrix appservice may submit audit records"}
        try:
            body = json.loads(body_of(request) or b"{}")
            items = body["records"]
            if not isinstance(items, list) or not items:
                raise ValueError("'records' must be a non-empty list")
            records = [AuditRecord(**{**item, "process": "appservice"}) for item in items]
        except (ValueError, KeyError, TypeError, AuditRecordInvalid) as exc:
            return 400, {"errcode": "M_BAD_JSON", "error": f"invalid audit records: {exc}"}
        for record in records:
            await self.writer.record(record)
        return 200, {"recorded": len(records)}

    async def _search(self, request: SynapseRequest) -> tuple[int, Any]:
        requester = await self._api.get_user_by_req(request)
        user_id = requester.user.to_string()
        local = identity.local_localpart(user_id, self._api.server_name)
        staff = self._policy.current.staff_for_localpart(local) if local is not None else None
        args = query_arguments(request.uri)
        fmt = args.pop("format", "json")
        if staff is None or AUDITOR_ROLE not in staff.roles:
            await self.writer.record(
                AuditRecord(actor=user_id, action=A.AUDIT_QUERY, object="audit", outcome=A.DENIED,
                            process=self.process, rule="audit.auditor_only", details={"filters": json.dumps(args)[:500]})
            )
            return 403, {"errcode": "M_FORBIDDEN", "error": "只有具有 'auditor' 角色的员工可以检索审计记录。"
                         " Only staff with the 'auditor' role may search the audit trail. [rule audit.auditor_only]"}
        try:
            if fmt not in FORMATS:
                raise AuditQueryInvalid(f"format must be one of {', '.join(FORMATS)}")
            actor = args.get("actor")
            query = AuditQuery(
                actor=resolve_actor(actor, self._policy.current.staff, self._api.server_name) if actor else None,
                room=args.get("room"), patient=args.get("patient"),
                action=args.get("action"), outcome=args.get("outcome"),
                since=parse_time(args["since"]) if "since" in args else None,
                until=parse_time(args["until"]) if "until" in args else None,
                limit=int(args.get("limit", 100)),
            )
        except (AuditQueryInvalid, AuditRecordInvalid, ValueError) as exc:
            return 400, {"errcode": "M_INVALID_PARAM", "error": str(exc)}
        await self.writer.ready()
        rows = await self._api.run_db_interaction("carematrix_audit_search", search, self._config.database, query)
        # The search is itself audited, before anything is returned.
        await self.writer.record(query_record(user_id, query, fmt, len(rows), process=self.process))
        return 200, (FORMATS[fmt], render(rows, fmt, server_name=self._api.server_name))


def query_arguments(uri: bytes) -> dict[str, str]:
    """A request's query string as text (the last value of each name). Parsed as text: given
    bytes, ``parse_qs`` re-encodes every value as ASCII, and a Chinese name or patient ID
    (``actor=%E6%9D%8E%E4%BC%9F``) failed the search with a 500 and a traceback."""
    raw = uri.split(b"?", 1)[1] if b"?" in uri else b""
    return {k: v[-1] for k, v in parse_qs(raw.decode("ascii", "replace"), encoding="utf-8", errors="replace").items()}


def login_identity(submission: dict, server_name: str) -> str | None:
    """The account a /login names (``identifier.user``, legacy ``user``, or a third-party
    address), as a full Matrix ID where it is one of ours."""
    identifier = submission.get("identifier")
    user = None
    if isinstance(identifier, dict):
        user = identifier.get("user") or identifier.get("address")
    user = user or submission.get("user")
    if not isinstance(user, str) or not user:
        return None
    user = user.strip()[:255]
    if not user.startswith("@") and "@" not in user:
        return f"@{user.lower()}:{server_name}"
    return user
