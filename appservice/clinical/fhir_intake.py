"""FHIR R4 pushed by hospital systems: a small FHIR endpoint and a Subscription receiver.

Every source authenticates with its own bearer token and may push only the resource types the
clinical policy lists for it. Input is validated completely before anything is stored, and a
request is answered only after its resources are in the same durable inbox HL7 uses: an
acknowledged resource survives any crash and is delivered exactly once. Anything wrong is
answered with an OperationOutcome naming the element, and kept as a dead letter.

Routes (under ``/_carematrix/fhir``): ``POST /{type}``, ``PUT /{type}/{id}``, ``POST /`` with a
batch/transaction/collection Bundle, and ``POST /notify`` for Subscription notifications
(R4B/R5 topic-based and the R4 backport).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from appservice.audit_client import AuditClient
from appservice.clinical.store import ClinicalStore
from bridges.fhir.events import extract_resource
from bridges.fhir.notification import parse_notification
from bridges.fhir.outcome import FhirInvalid, Issue, ok_outcome, operation_outcome
from bridges.fhir.validate import parse_json, validate_bundle_entries, validate_resource
from bridges.records import ResultEvent
from carematrix.policy.holder import PolicyHolder

log = logging.getLogger("carematrix.appservice.fhir")

BASE = "/_carematrix/fhir"
FHIR_JSON = "application/fhir+json"
MESSAGE_PREFIX = "FHIR/"  # inbox message_type of FHIR input: "FHIR/Observation"
MAX_BODY = 20 * 1024 * 1024


def fhir_response(body: dict, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(body, ensure_ascii=False), status=status, content_type=FHIR_JSON, charset="utf-8",
        headers=headers,
    )


def inbox_key(resource: dict, raw: bytes) -> str:
    """The deduplication key: a resource version is delivered once however often it is sent.
    Without a version the content decides, so an unchanged resend is a duplicate and a changed
    resource is news. No slashes: the key appears in the alert-state URL."""
    rid = str(resource.get("id") or "")
    version = str((resource.get("meta") or {}).get("versionId") or "")
    kind = resource.get("resourceType", "Resource")
    if rid and version:
        return f"{kind}-{rid}-v{version}"
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return f"{kind}-{rid or 'new'}-{digest}"


def alert_path(source: str, key: str) -> str:
    return f"/_carematrix/alerts/{source}/{key}"


class FhirIntake:
    def __init__(
        self, store: ClinicalStore, holder: PolicyHolder, tokens: dict[str, str], audit: AuditClient,
        wake: Callable[[bool], None], can_fetch: bool,
    ) -> None:
        self.store = store
        self.holder = holder
        self.tokens = tokens
        self.audit = audit
        self.wake = wake
        # id-only notifications name a resource without carrying it: usable only when the
        # hospital's FHIR server is connected to fetch it from.
        self.can_fetch = can_fetch

    def routes(self, app: web.Application) -> None:
        app.router.add_post(BASE + "/notify", self.notify)
        app.router.add_post(BASE, self.push_bundle)
        app.router.add_post(BASE + "/", self.push_bundle)
        app.router.add_post(BASE + "/{type}", self.push_resource)
        app.router.add_put(BASE + "/{type}/{id}", self.push_resource)

    # -- who is calling ------------------------------------------------------------------

    def source_of(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        given = header[len("Bearer "):].encode()
        for source, token in self.tokens.items():
            if hmac.compare_digest(given, token.encode()):
                return source
        return None

    def allowed(self, source: str) -> frozenset[str] | None:
        clinical = self.holder.current.clinical
        sources = (clinical.fhir_sources or {}) if clinical else {}
        return sources.get(source)

    def _allowed_for(self, source: str | None) -> frozenset[str]:
        """What the caller may push; FhirInvalid (401/403) if it may push nothing."""
        if source is None:
            raise FhirInvalid(
                [Issue("error", "login", "A FHIR source must send its bearer token (Authorization: Bearer …)")],
                status=401,
            )
        allowed = self.allowed(source)
        if allowed is None:
            raise FhirInvalid(
                [Issue("error", "forbidden", f"FHIR source '{source}' is not listed in the clinical policy (fhir_sources)")],
                status=403,
            )
        return allowed

    async def _body(self, request: web.Request) -> tuple[bytes, Any]:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise FhirInvalid([Issue("error", "too-long", f"request body over {MAX_BODY // 1024 // 1024} MB")], status=413)
        raw = await request.read()
        return raw, parse_json(raw)

    # -- handlers ------------------------------------------------------------------------

    async def push_resource(self, request: web.Request) -> web.Response:
        return await self._guard(request, self._push_resource)

    async def push_bundle(self, request: web.Request) -> web.Response:
        return await self._guard(request, self._push_bundle)

    async def notify(self, request: web.Request) -> web.Response:
        return await self._guard(request, self._notify)

    async def _guard(self, request: web.Request, handler: Callable[..., Any]) -> web.Response:
        """One place turns every refusal into an OperationOutcome and a dead letter."""
        peer = request.remote or "?"
        source = self.source_of(request)
        raw = b""
        try:
            allowed = self._allowed_for(source)
            raw, data = await self._body(request)
            return await handler(request, source, allowed, raw, data)
        except FhirInvalid as exc:
            first = exc.issues[0] if exc.issues else Issue("error", "invalid", "invalid input")
            if exc.status not in (401, 413):
                await self.store.dead_letter(
                    f"fhir:{source or peer}", raw, f"fhir-{first.code}",
                    "; ".join(f"{i.expression or '-'}: {i.diagnostics}" for i in exc.issues),
                )
            log.warning("FHIR from %s refused (%d): %s", source or peer, exc.status, first.diagnostics)
            await self.audit.record(
                actor=f"fhir:{source or peer}", action="bridge.fhir.rejected", object=request.path,
                outcome="failure", source=peer, process="appservice",
                details={"status": exc.status, "code": first.code, "expression": first.expression},
            )
            return fhir_response(operation_outcome(exc.issues), status=exc.status)

    async def _push_resource(
        self, request: web.Request, source: str, allowed: frozenset[str], raw: bytes, data: Any
    ) -> web.Response:
        resource = validate_resource(data, allowed)
        kind = request.match_info["type"]
        if resource.get("resourceType") != kind:
            raise FhirInvalid([Issue(
                "error", "invalid", f"the body is a {resource.get('resourceType')}, the URL says {kind}", "resourceType",
            )])
        if request.method == "PUT" and str(resource.get("id", "")) != request.match_info["id"]:
            raise FhirInvalid([Issue("error", "invalid", "the resource id must match the id in the URL", f"{kind}.id")])
        key, new = await self._store(source, resource, {}, request.remote or "?")
        status = 201 if new else 200
        return fhir_response(
            ok_outcome(f"accepted{'' if new else ' (already received)'}; alert state: {alert_path(source, key)}"),
            status=status, headers={"Location": alert_path(source, key)},
        )

    async def _push_bundle(
        self, request: web.Request, source: str, allowed: frozenset[str], raw: bytes, data: Any
    ) -> web.Response:
        if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
            raise FhirInvalid([Issue("error", "structure", "POST to the base takes a Bundle", "resourceType")])
        resources = validate_bundle_entries(data, allowed)
        included = _index(resources)
        entries = []
        for resource in resources:
            key, new = await self._store(source, resource, included, request.remote or "?")
            entries.append({"response": {"status": "201 Created" if new else "200 OK", "location": alert_path(source, key)}})
        kind = data.get("type")
        answer = {"resourceType": "Bundle", "type": f"{kind}-response" if kind in ("batch", "transaction") else "batch-response", "entry": entries}
        return fhir_response(answer)

    async def _notify(
        self, request: web.Request, source: str, allowed: frozenset[str], raw: bytes, data: Any
    ) -> web.Response:
        note = parse_notification(data)
        if note.kind != "event-notification":
            return fhir_response(ok_outcome(f"{note.kind} received"))
        stored = []
        for event in note.events:
            if event.resource is not None:
                resource = validate_resource(event.resource, allowed)
                payload: dict[str, Any] = {"resource": resource, "included": note.included}
                kind = str(resource["resourceType"])
            else:
                kind = event.focus.split("/", 1)[0]
                if kind not in allowed:
                    raise FhirInvalid([Issue("error", "forbidden", f"source '{source}' may not send {kind}", "focus")], status=403)
                if not self.can_fetch:
                    raise FhirInvalid([Issue(
                        "error", "not-supported",
                        "id-only notifications need the hospital FHIR server connected (systems.fhir_server); "
                        "send full-resource notifications", "SubscriptionStatus.notificationEvent.focus",
                    )], status=422)
                payload = {"reference": event.focus, "included": note.included}
            subscription = note.subscription.rsplit("/", 1)[-1] or "subscription"
            key = f"{subscription}-{event.number}" if event.number else inbox_key(payload.get("resource") or {"resourceType": kind}, json.dumps(payload, sort_keys=True).encode())
            new = await self._accept(source, key, kind, payload, request.remote or "?")
            stored.append((key, new))
        return fhir_response(ok_outcome(
            f"{len(stored)} event(s) accepted" + "".join(f"; {alert_path(source, k)}" for k, _ in stored)
        ))

    # -- storage ---------------------------------------------------------------------------

    async def _store(self, source: str, resource: dict, included: dict[str, dict], peer: str) -> tuple[str, bool]:
        raw = json.dumps(resource, sort_keys=True, ensure_ascii=False).encode()
        key = inbox_key(resource, raw)
        new = await self._accept(source, key, str(resource["resourceType"]), {"resource": resource, "included": included}, peer)
        return key, new

    async def _accept(self, source: str, key: str, kind: str, payload: dict, peer: str) -> bool:
        data = json.dumps(payload, ensure_ascii=False).encode()
        urgent = _critical(payload)
        new = await self.store.accept(source, key, MESSAGE_PREFIX + kind, data, urgent)
        await self.audit.record(
            actor=f"fhir:{source}", action="bridge.fhir.received", object=key, outcome="success",
            source=peer, process="appservice", details={"type": kind, "duplicate": not new},
        )
        if new:
            self.wake(urgent)
        return new


def _index(resources: list[dict]) -> dict[str, dict]:
    """Resources of one Bundle by "Type/id", so an Observation finds its Patient or order."""
    return {f"{r['resourceType']}/{r['id']}": r for r in resources if r.get("id")}


def _critical(payload: dict) -> bool:
    """A critical result is delivered ahead of any backlog (like HL7 with OBX-8 HH/LL/AA)."""
    resource = payload.get("resource")
    if not resource:
        return False
    try:
        event = extract_resource(resource, payload.get("included") or {})
    except FhirInvalid:
        return False
    return isinstance(event, ResultEvent) and bool(event.critical_observations)
