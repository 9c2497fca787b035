"""The demo hospital's EMR: a small FHIR R4 server, and the test suite's stand-in for the
hospital's FHIR server.

``carematrix up`` (demo mode) runs it with the demo patients (``data/hospital.json`` beside
this module) as the FHIR server case summaries are read from and the EMR closed cases are
filed to, so the clinical flow can be tried without a hospital. It keeps everything in memory:
archives filed to it are gone when it stops (the appservice keeps its own copy in
``var/case-archives/``).

It is deliberately strict where a real server would be, so that client bugs show up here rather
than at the hospital: unknown search parameters get a 400 (as with ``Prefer: handling=strict``),
missing resources a 404 OperationOutcome, a wrong bearer token a 401, and search results are
paged with a ``next`` link when ``_count`` cuts them short, and ``If-None-Exist`` is honoured
(conditional create). It records every resource created by a POST, so tests can check what was
sent to the EMR.

Use it in-process (a background thread with its own event loop, so synchronous clients such as
fhirclient can call it from the test's thread)::

    server = start_fhir_server(DEMO_DATA, token="s3cret")
    ...  # server.url is the FHIR base, e.g. http://127.0.0.1:41234/fhir
    server.received()  # resources POSTed so far
    server.stop()

or as a process (as the supervisor runs it)::

    python -m carematrix_ops.demo.emr --port 8090 --data carematrix_ops/demo/data/hospital.json

then ``GET /_test/received`` (outside the FHIR base, no token needed) returns the POSTed resources.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from carematrix_ops.demo.threaded import serve_in_thread

BASE_PATH = "/fhir"
FHIR_JSON = "application/fhir+json"
TYPE_RE = re.compile(r"^[A-Z][A-Za-z]+$")
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# Where each resource type keeps the date `_sort=date` orders by, first present wins.
DATE_FIELDS = (
    "effectiveDateTime",
    "effectivePeriod.start",
    "effectiveInstant",
    "period.start",
    "onsetDateTime",
    "recordedDate",
    "authoredOn",
    "sent",
    "date",
    "issued",
)
SEARCH_PARAMS = {"patient", "subject", "identifier", "clinical-status", "category", "status", "_id"}
CONTROL_PARAMS = {"_sort", "_count", "_offset", "_format"}
DEFAULT_COUNT = 50


def _outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def _fhir_response(body: dict[str, Any], status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False),
        content_type=FHIR_JSON,
        charset="utf-8",
        headers=headers,
    )


def _error(status: int, code: str, diagnostics: str, **headers: str) -> web.Response:
    return _fhir_response(_outcome(code, diagnostics), status, **headers)


def _path_values(resource: Any, path: str) -> Iterator[Any]:
    """Every value at a dotted path, descending through lists like FHIRPath does."""
    values = [resource]
    for part in path.split("."):
        nxt = []
        for value in values:
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, dict) and part in item:
                    got = item[part]
                    nxt.extend(got if isinstance(got, list) else [got])
        values = nxt
    yield from values


def _reference_id(reference: str, resource_type: str) -> str | None:
    # Relative ("Patient/1") and absolute ("https://x/fhir/Patient/1") references alike.
    parts = reference.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return None


def _match_reference(resource: dict[str, Any], value: str) -> bool:
    wanted = _reference_id(value, "Patient") or value
    for ref in itertools.chain(
        _path_values(resource, "subject.reference"), _path_values(resource, "patient.reference")
    ):
        if isinstance(ref, str) and _reference_id(ref, "Patient") == wanted:
            return True
    return False


def _token_match(system: str | None, code: str, coding_system: Any, coding_code: Any) -> bool:
    if code and coding_code != code:
        return False
    if system is None:  # "code": any system
        return bool(code)
    if system == "":  # "|code": no system
        return coding_system is None
    return coding_system == system


def _split_token(value: str) -> tuple[str | None, str]:
    if "|" in value:
        system, code = value.split("|", 1)
        return system, code
    return None, value


def _match_identifier(resource: dict[str, Any], value: str) -> bool:
    system, code = _split_token(value)
    return any(
        isinstance(ident, dict)
        and _token_match(system, code, ident.get("system"), ident.get("value"))
        for ident in _path_values(resource, "identifier")
    )


def _match_coding(resource: dict[str, Any], path: str, value: str) -> bool:
    system, code = _split_token(value)
    for concept in _path_values(resource, path):
        if isinstance(concept, str):  # AllergyIntolerance.category is a plain code
            if system is None and concept == code:
                return True
            continue
        for coding in _path_values(concept, "coding"):
            if _token_match(system, code, coding.get("system"), coding.get("code")):
                return True
    return False


def _any_of(values: str, test: Callable[[str], bool]) -> bool:
    # A comma in a token parameter means OR.
    return any(test(v) for v in values.split(","))


def _sort_key(resource: dict[str, Any]) -> datetime | None:
    for path in DATE_FIELDS:
        for value in _path_values(resource, path):
            if isinstance(value, str):
                return _parse_date(value)
    return None


def _parse_date(value: str) -> datetime:
    # Partial dates ("2014", "2014-05") sort as their first instant; no zone means UTC.
    padded = value
    if len(value) == 4:
        padded = value + "-01-01"
    elif len(value) == 7:
        padded = value + "-01"
    parsed = datetime.fromisoformat(padded)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class FhirStore:
    """The server's state; touched only from the event loop's thread, copied out under a lock."""

    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    received: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def load(self, data_file: Path) -> None:
        bundle = json.loads(data_file.read_text(encoding="utf-8"))
        if bundle.get("resourceType") != "Bundle":
            raise ValueError(f"{data_file} is not a FHIR Bundle")
        for entry in bundle.get("entry", []):
            resource = entry["resource"]
            self.resources[(resource["resourceType"], resource["id"])] = resource

    def allocate_id(self, rtype: str) -> str:
        while True:
            rid = f"{rtype.lower()}-{next(self._ids)}"
            if (rtype, rid) not in self.resources:
                return rid

    def create(self, resource: dict[str, Any], rid: str | None = None) -> dict[str, Any]:
        rtype = resource["resourceType"]
        stored = copy.deepcopy(resource)
        stored["id"] = rid or self.allocate_id(rtype)
        stored["meta"] = {
            **stored.get("meta", {}),
            "versionId": "1",
            "lastUpdated": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        with self.lock:
            self.resources[(rtype, stored["id"])] = stored
            self.received.append(copy.deepcopy(stored))
        return stored


def _rewrite_references(value: Any, mapping: dict[str, str]) -> Any:
    """Transaction semantics: references to an entry's fullUrl point at the id it was given."""
    if isinstance(value, dict):
        return {
            k: (mapping.get(v, v) if k == "reference" and isinstance(v, str)
                else _rewrite_references(v, mapping))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite_references(v, mapping) for v in value]
    return value


class FhirApp:
    def __init__(self, store: FhirStore, token: str | None) -> None:
        self.store = store
        self.token = token

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024 * 1024)
        app.router.add_get(f"{BASE_PATH}/metadata", self.metadata)
        app.router.add_get("/_test/received", self.test_received)
        app.router.add_post(BASE_PATH, self.transaction)
        app.router.add_post(f"{BASE_PATH}/", self.transaction)
        app.router.add_get(f"{BASE_PATH}/{{type}}", self.search)
        app.router.add_post(f"{BASE_PATH}/{{type}}", self.create)
        app.router.add_get(f"{BASE_PATH}/{{type}}/{{id}}", self.read)
        return app

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        with self.store.lock:
            self.store.requests.append(
                {
                    "method": request.method,
                    "path_qs": request.path_qs,
                    "authorization": request.headers.get("Authorization"),
                }
            )
        # As on SMART servers, the CapabilityStatement is public: clients read it to learn how
        # to authenticate.
        public = request.path in (f"{BASE_PATH}/metadata", "/_test/received")
        if self.token is not None and not public:
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                return _error(401, "login", "missing or wrong bearer token",
                              **{"WWW-Authenticate": 'Bearer realm="fhir"'})
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status == 404:
                return _error(404, "not-found", f"no route for {request.method} {request.path}")
            if exc.status == 405:
                return _error(405, "not-supported", f"{request.method} not supported here")
            raise

    def _base(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}{BASE_PATH}"

    async def metadata(self, request: web.Request) -> web.Response:
        types = sorted({t for t, _ in self.store.resources} | {"Communication", "Bundle"})
        security: dict[str, Any] = {"cors": False}
        if self.token is not None:
            security["description"] = "Bearer token required"
        return _fhir_response(
            {
                "resourceType": "CapabilityStatement",
                "status": "active",
                "date": "2026-11-01",
                "kind": "instance",
                "software": {"name": "CareMatrix demo EMR"},
                "implementation": {"description": "demo EMR / test stand-in", "url": self._base(request)},
                "fhirVersion": "4.0.1",
                "format": ["json"],
                "rest": [
                    {
                        "mode": "server",
                        "security": security,
                        "resource": [
                            {
                                "type": t,
                                "interaction": [
                                    {"code": "read"},
                                    {"code": "search-type"},
                                    {"code": "create"},
                                ],
                            }
                            for t in types
                        ],
                        "interaction": [{"code": "transaction"}, {"code": "batch"}],
                    }
                ],
            }
        )

    async def test_received(self, request: web.Request) -> web.Response:
        with self.store.lock:
            received = copy.deepcopy(self.store.received)
        return web.json_response(received)

    async def read(self, request: web.Request) -> web.Response:
        rtype, rid = request.match_info["type"], request.match_info["id"]
        if not TYPE_RE.match(rtype) or not ID_RE.match(rid):
            return _error(400, "invalid", f"not a FHIR read: {request.path}")
        resource = self.store.resources.get((rtype, rid))
        if resource is None:
            return _error(404, "not-found", f"{rtype}/{rid} is not known")
        return _fhir_response(resource)

    async def search(self, request: web.Request) -> web.Response:
        rtype = request.match_info["type"]
        if not TYPE_RE.match(rtype):
            return _error(400, "invalid", f"not a resource type: {rtype}")
        params = request.query
        unknown = sorted(set(params) - SEARCH_PARAMS - CONTROL_PARAMS)
        if unknown:
            return _error(400, "not-supported", f"unsupported search parameter(s): {unknown}")
        try:
            count = int(params.get("_count", DEFAULT_COUNT))
            offset = int(params.get("_offset", 0))
        except ValueError:
            return _error(400, "invalid", "_count and _offset must be integers")
        sort = params.get("_sort")
        if sort not in (None, "date", "-date"):
            return _error(400, "not-supported", f"cannot sort by {sort}")

        hits = self._find(rtype, params.items())
        if sort:
            keyed = [(key, r) for r in hits if (key := _sort_key(r)) is not None]
            keyed.sort(key=lambda pair: pair[0], reverse=sort.startswith("-"))
            undated = [r for r in hits if _sort_key(r) is None]
            hits = [r for _, r in keyed] + undated  # no date: last, either way

        base = self._base(request)
        page = hits[offset : offset + count] if count >= 0 else []
        query = [(k, v) for k, v in params.items() if k != "_offset"]
        links = [{"relation": "self", "url": f"{base}/{rtype}?{urlencode(params)}"}]
        if offset + count < len(hits):
            nxt = urlencode([*query, ("_offset", str(offset + count))])
            links.append({"relation": "next", "url": f"{base}/{rtype}?{nxt}"})
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(hits),
            "link": links,
        }
        if page:
            bundle["entry"] = [
                {
                    "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in page
            ]
        return _fhir_response(bundle)

    def _find(self, rtype: str, params: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        hits = [r for (t, _), r in self.store.resources.items() if t == rtype]
        for name, value in params:
            hits = [r for r in hits if self._matches(r, name, value)]
        return hits

    def _matches(self, resource: dict[str, Any], name: str, value: str) -> bool:
        if name in CONTROL_PARAMS:
            return True
        if name in ("patient", "subject"):
            return _any_of(value, lambda v: _match_reference(resource, v))
        if name == "_id":
            return _any_of(value, lambda v: resource.get("id") == v)
        if name == "identifier":
            return _any_of(value, lambda v: _match_identifier(resource, v))
        if name == "clinical-status":
            return _any_of(value, lambda v: _match_coding(resource, "clinicalStatus", v))
        if name == "category":
            return _any_of(value, lambda v: _match_coding(resource, "category", v))
        if name == "status":
            return _any_of(value, lambda v: resource.get("status") == v)
        return False

    async def _json_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        if request.content_type not in (FHIR_JSON, "application/json"):
            return _error(415, "not-supported", f"cannot read {request.content_type}")
        try:
            body = json.loads(await request.text())
        except ValueError as exc:
            return _error(400, "structure", f"body is not JSON: {exc}")
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            return _error(400, "structure", "body is not a FHIR resource")
        return body

    async def create(self, request: web.Request) -> web.Response:
        rtype = request.match_info["type"]
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        if body["resourceType"] != rtype:
            return _error(400, "invalid", f"resourceType {body['resourceType']} posted to {rtype}")
        condition = request.headers.get("If-None-Exist")
        if condition is not None:
            # Conditional create: what makes a retried upload safe against duplicates.
            criteria = parse_qsl(condition.lstrip("?"), keep_blank_values=True)
            unknown = sorted({k for k, _ in criteria} - SEARCH_PARAMS)
            if not criteria or unknown:
                return _error(400, "invalid", f"unusable If-None-Exist: {condition!r}")
            existing = self._find(rtype, criteria)
            if len(existing) > 1:
                return _error(412, "duplicate", f"{len(existing)} {rtype} match {condition!r}")
            if existing:
                found = existing[0]
                location = f"{self._base(request)}/{rtype}/{found['id']}/_history/1"
                return _fhir_response(found, 200, Location=location)
        stored = self.store.create(body)
        location = f"{self._base(request)}/{rtype}/{stored['id']}/_history/1"
        return _fhir_response(stored, 201, Location=location, ETag='W/"1"')

    async def transaction(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        kind = body.get("type")
        if body["resourceType"] != "Bundle" or kind not in ("transaction", "batch"):
            return _error(400, "invalid", "POST to the base needs a transaction or batch Bundle")
        entries = body.get("entry", [])
        for i, entry in enumerate(entries):
            req = entry.get("request", {})
            res = entry.get("resource")
            if req.get("method") != "POST" or not isinstance(res, dict):
                return _error(400, "not-supported", f"entry {i}: only POST of a resource")
            if req.get("url") != res.get("resourceType"):
                return _error(400, "invalid", f"entry {i}: url does not match the resource")
        # Ids first, so that entries can refer to each other by fullUrl in any order.
        allocated = [self.store.allocate_id(e["resource"]["resourceType"]) for e in entries]
        mapping = {
            e["fullUrl"]: f"{e['resource']['resourceType']}/{rid}"
            for e, rid in zip(entries, allocated, strict=True)
            if e.get("fullUrl")
        }
        response_entries = []
        for entry, rid in zip(entries, allocated, strict=True):
            stored = self.store.create(_rewrite_references(entry["resource"], mapping), rid)
            response_entries.append(
                {
                    "response": {
                        "status": "201 Created",
                        "location": f"{stored['resourceType']}/{rid}/_history/1",
                        "etag": 'W/"1"',
                        "lastModified": stored["meta"]["lastUpdated"],
                    }
                }
            )
        return _fhir_response(
            {"resourceType": "Bundle", "type": f"{kind}-response", "entry": response_entries}
        )


@dataclass
class FhirTestServer:
    """A running server; ``url`` is the FHIR base (no trailing slash)."""

    url: str
    store: FhirStore
    _stop: Callable[[], None]

    def stop(self) -> None:
        self._stop()

    def received(self) -> list[dict[str, Any]]:
        """Every resource created by a POST so far (transaction entries one by one; a conditional
        create that found a match adds nothing), as stored with its assigned id, in order."""
        with self.store.lock:
            return copy.deepcopy(self.store.received)

    def requests(self) -> list[dict[str, Any]]:
        """Every request seen: method, path with query, Authorization header."""
        with self.store.lock:
            return copy.deepcopy(self.store.requests)

    def __enter__(self) -> FhirTestServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_fhir_server(
    data_file: Path | None, port: int = 0, token: str | None = None
) -> FhirTestServer:
    """Serve on 127.0.0.1 from a background thread; port 0 picks a free one."""
    store = FhirStore()
    if data_file is not None:
        store.load(data_file)
    bound, stop = serve_in_thread(FhirApp(store, token).build(), "the demo EMR (FHIR server)", port)
    return FhirTestServer(f"http://127.0.0.1:{bound}{BASE_PATH}", store, stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The demo hospital's EMR: a small FHIR R4 server")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--data", type=Path, default=None, help="FHIR Bundle to serve")
    parser.add_argument("--token", default=None, help="require this bearer token")
    args = parser.parse_args(argv)
    store = FhirStore()
    if args.data is not None:
        store.load(args.data)
    print(f"FHIR base: http://{args.host}:{args.port}{BASE_PATH}", flush=True)
    web.run_app(FhirApp(store, args.token).build(), host=args.host, port=args.port,
                print=None, access_log=None)


if __name__ == "__main__":
    main()
