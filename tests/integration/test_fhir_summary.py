"""fetch_summary against a real (test) FHIR server over HTTP, and that server itself.

carematrix_ops/demo/emr.py (the demo hospital's EMR) stands in for the hospital's FHIR server and
EMR; its data, carematrix_ops/demo/data/hospital.json, has one patient whose FHIR id equals the MRN
(P20261101) and one whose FHIR id (20031) differs from the MRN (P20261102), so lookup by MRN is
really exercised.
"""

from __future__ import annotations

import copy
import http.server
import importlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from fhir.resources.R4B.bundle import Bundle as R4BBundle
from fhirclient.models.bundle import Bundle as R4Bundle

from appservice.clinical.archive import CaseInfo, CaseMessage, build_bundle
from appservice.clinical.summary import SummaryUnavailable, fetch_summary
from carematrix_ops.demo import DEMO_DATA
from carematrix_ops.demo.emr import FhirTestServer, start_fhir_server
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
DATA = DEMO_DATA
TOKEN = "test-token-5f2a"
FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module")
def hospital() -> Iterator[FhirTestServer]:
    server = start_fhir_server(DATA)
    yield server
    server.stop()


@pytest.fixture
def fresh() -> Iterator[FhirTestServer]:
    """A server of its own, for tests that count requests or POST."""
    with start_fhir_server(DATA) as server:
        yield server


@pytest.fixture(scope="module")
def secured() -> Iterator[FhirTestServer]:
    with start_fhir_server(DATA, token=TOKEN) as server:
        yield server


def data_with(tmp_path: Path, *resources: dict) -> Path:
    bundle = json.loads(DATA.read_text(encoding="utf-8"))
    for r in resources:
        bundle["entry"].append({"fullUrl": f"urn:uuid:{r['id']}", "resource": r})
    path = tmp_path / "hospital.json"
    path.write_text(json.dumps(bundle, ensure_ascii=False), encoding="utf-8")
    return path


# -- the demo data ------------------------------------------------------------------------


def test_demo_data_validates_with_strict_r4_models():
    bundle = json.loads(DATA.read_text(encoding="utf-8"))
    R4Bundle(copy.deepcopy(bundle), strict=True)
    R4BBundle.model_validate(bundle)
    seen = set()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        rtype = resource["resourceType"]
        model = getattr(importlib.import_module(f"fhirclient.models.{rtype.lower()}"), rtype)
        model(copy.deepcopy(resource), strict=True)  # raises FHIRValidationError if not R4
        assert entry["fullUrl"].endswith(f"/{rtype}/{resource['id']}")
        assert (rtype, resource["id"]) not in seen
        seen.add((rtype, resource["id"]))
    kinds = {t for t, _ in seen}
    assert kinds == {"Patient", "Location", "Encounter", "Condition", "AllergyIntolerance", "Observation"}


# -- fetch_summary ------------------------------------------------------------------------


def test_summary_by_fhir_id(hospital):
    s = fetch_summary(hospital.url, "P20261101")
    assert (s.patient_id, s.name, s.gender, s.birth_date) == (
        "P20261101", "王建国", "male", "1958-03-14"
    )
    assert s.encounters == [
        "2026-11-20 住院 · 心内科 5A (in-progress)",
        "2025-06-03 门诊 · 内分泌科门诊 (finished)",
    ]
    assert s.problems == [
        "急性ST段抬高型心肌梗死 [I21.0] · since 2026-11-20",
        "2型糖尿病 [E11.9] · since 2014-05-01",
    ]  # the resolved pneumonia is not listed
    assert s.allergies == [
        "青霉素 (medication allergy) · criticality high · reaction: 过敏性休克 (severe)"
    ]  # the refuted, inactive sulfonamide intolerance is not listed


def test_labs_are_the_ten_newest_laboratory_results(hospital):
    labs = fetch_summary(hospital.url, "P20261101").labs
    assert len(labs) == 10
    assert labs[0] == "Potassium 6.8 mmol/L [HH] 2026-11-25 08:10"
    assert "Sodium 138 mmol/L 2026-11-25 08:10" in labs  # normal: no flag
    assert labs[-1] == "CK-MB 48 ng/mL [H] 2026-11-20 22:15"
    assert not any("Heart rate" in line for line in labs)  # vital sign, not a lab
    assert not any("2025-06-03" in line for line in labs)  # 11th newest: cut by _count
    times = [line[-16:] for line in labs]
    assert times == sorted(times, reverse=True)


def test_only_the_first_search_page_is_read(fresh):
    fetch_summary(fresh.url, "P20261101")
    observation_gets = [r for r in fresh.requests() if r["path_qs"].startswith("/fhir/Observation")]
    assert len(observation_gets) == 1
    page = requests.get(f"{fresh.url}/{observation_gets[0]['path_qs'].split('/', 2)[2]}").json()
    assert page["total"] == 11
    assert [link["relation"] for link in page["link"]] == ["self", "next"]


def test_summary_by_mrn_when_the_fhir_id_differs(fresh):
    s = fetch_summary(fresh.url, "P20261102")
    assert (s.patient_id, s.name, s.gender) == ("P20261102", "李秀英", "female")
    assert s.encounters == ["2026-11-23 住院 · 重症医学科 ICU 3床 (in-progress)"]
    assert s.problems == ["脓毒性休克 [R57.2] · since 2026-11-23"]
    assert s.allergies == []
    assert s.labs == [
        "Lactate 4.1 mmol/L [H] 2026-11-25 06:00",
        "WBC 15.2 10*9/L [H] 2026-11-25 06:00",
    ]
    paths = [r["path_qs"] for r in fresh.requests()]
    assert paths[:2] == ["/fhir/Patient/P20261102", "/fhir/Patient?identifier=P20261102"]
    assert "/fhir/Encounter?patient=20031&_sort=-date&_count=5" in paths
    assert fetch_summary(fresh.url, "20031") == s
    assert fetch_summary(fresh.url, "urn:carematrix:mrn|P20261102") == s


def test_unknown_patient(hospital):
    with pytest.raises(SummaryUnavailable, match="no patient with ID or MRN P99999999"):
        fetch_summary(hospital.url, "P99999999")


def test_ambiguous_identifier_prefers_the_mrn_and_otherwise_refuses(tmp_path):
    def patient(pid: str, value: str, mr: bool) -> dict:
        ident = {"system": "urn:carematrix:mrn" if mr else "urn:oid:2.16.156.10011.1.12",
                 "value": value}
        return {"resourceType": "Patient", "id": pid, "identifier": [ident],
                "name": [{"text": pid}], "gender": "other"}

    data = data_with(tmp_path, patient("a1", "X77", mr=True), patient("b2", "X77", mr=False),
                     patient("c3", "Y88", mr=True), patient("d4", "Y88", mr=True))
    with start_fhir_server(data) as server:
        assert fetch_summary(server.url, "X77").name == "a1"
        with pytest.raises(SummaryUnavailable, match="2 patients match Y88; refusing to guess"):
            fetch_summary(server.url, "Y88")


def test_bearer_token(secured):
    with pytest.raises(SummaryUnavailable, match="401"):
        fetch_summary(secured.url, "P20261101")
    with pytest.raises(SummaryUnavailable, match="401"):
        fetch_summary(secured.url, "P20261101", headers={"Authorization": "Bearer wrong"})
    s = fetch_summary(secured.url, "P20261101", headers={"Authorization": f"Bearer {TOKEN}"})
    assert s.name == "王建国"
    last = secured.requests()[-5:]
    assert {r["authorization"] for r in last} == {f"Bearer {TOKEN}"}


def test_server_not_listening():
    port = free_port()
    with pytest.raises(SummaryUnavailable, match="cannot connect"):
        fetch_summary(f"http://127.0.0.1:{port}/fhir", "P20261101", timeout=2)


def test_server_that_never_answers_times_out():
    with socket.socket() as listener:  # accepts connections in the kernel, never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(SummaryUnavailable, match="did not answer within 0.5 s"):
            fetch_summary(f"http://127.0.0.1:{port}/fhir", "P20261101", timeout=0.5)
        assert time.monotonic() - started < 5


def test_invalid_resource_from_the_server(tmp_path):
    broken = {"resourceType": "Patient", "id": "bad1", "gender": "male", "birthDate": 1958,
              "favouriteColour": "blue"}
    with start_fhir_server(data_with(tmp_path, broken)) as server:
        with pytest.raises(SummaryUnavailable, match="invalid data"):
            fetch_summary(server.url, "bad1")


class _Stub(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b"<html>maintenance</html>"

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "reason"), [(200, "invalid data"), (500, "HTTP 500"),
                                                (403, "denied access")])
def test_broken_gateway(status, reason):
    handler = type("Stub", (_Stub,), {"status": status})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(SummaryUnavailable, match=reason):
            fetch_summary(f"http://127.0.0.1:{httpd.server_address[1]}/fhir", "P20261101")
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- the test server as a FHIR server -----------------------------------------------------


def test_metadata_is_public_and_everything_else_needs_the_token(secured):
    meta = requests.get(f"{secured.url}/metadata")
    assert meta.status_code == 200
    assert meta.json()["fhirVersion"] == "4.0.1"
    denied = requests.get(f"{secured.url}/Patient/P20261101")
    assert denied.status_code == 401
    assert denied.json()["resourceType"] == "OperationOutcome"
    assert denied.headers["WWW-Authenticate"].startswith("Bearer")


def test_read_and_missing_resource(hospital):
    ok = requests.get(f"{hospital.url}/Patient/P20261101")
    assert ok.headers["Content-Type"].startswith(FHIR_JSON)
    assert ok.json()["name"][0]["text"] == "王建国"
    missing = requests.get(f"{hospital.url}/Patient/nobody")
    assert missing.status_code == 404
    assert missing.json()["issue"][0]["code"] == "not-found"


def test_search_parameters(hospital):
    def ids(query: str) -> list[str]:
        bundle = requests.get(f"{hospital.url}/{query}").json()
        assert bundle["type"] == "searchset"
        assert bundle["total"] >= len(bundle.get("entry", []))
        return [e["resource"]["id"] for e in bundle.get("entry", [])]

    assert ids("Patient?identifier=urn:carematrix:mrn|P20261102") == ["20031"]
    assert ids("Patient?identifier=other-system|P20261102") == []
    assert ids("Condition?subject=Patient/P20261101&clinical-status=resolved") == ["cond-1101-cap"]
    assert ids("AllergyIntolerance?patient=P20261101&clinical-status=active,inactive") == [
        "allergy-1101-pen", "allergy-1101-sulfa"
    ]
    assert ids("Observation?patient=P20261101&category=vital-signs") == ["vs-1101-hr-1"]
    oldest_first = ids("Observation?patient=P20261101&category=laboratory&_sort=date&_count=2")
    assert oldest_first == ["lab-1101-k-1", "lab-1101-k-2"]
    bad = requests.get(f"{hospital.url}/Observation?code=2823-3")
    assert bad.status_code == 400
    assert "unsupported search parameter" in bad.json()["issue"][0]["diagnostics"]


def test_next_link_pages_through_results(hospital):
    url = f"{hospital.url}/Observation?patient=P20261101&category=laboratory&_sort=-date&_count=4"
    seen = []
    while url:
        page = requests.get(url).json()
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert len(seen) == len(set(seen)) == 11


def case_bundle() -> dict:
    tz = timezone(timedelta(hours=8))
    t0 = datetime(2026, 11, 25, 9, 0, tzinfo=tz)
    info = CaseInfo("CASE-7", "P20261101", "王建国", "!r:x", "STEMI", t0, "@a:x",
                    t0 + timedelta(hours=1), "@b:x")
    msgs = [CaseMessage(f"$e{i}:x", "@a:x", "张伟", "10234", t0 + timedelta(minutes=i), "text",
                        f"message {i}") for i in range(3)]
    return build_bundle(info, msgs)


def test_archive_posted_to_the_emr_once_with_conditional_create(fresh):
    bundle = case_bundle()
    headers = {"Content-Type": FHIR_JSON, "If-None-Exist": "identifier=urn:carematrix:case|CASE-7"}
    first = requests.post(f"{fresh.url}/Bundle", json=bundle, headers=headers)
    assert first.status_code == 201
    assert first.headers["Location"].startswith(f"{fresh.url}/Bundle/")
    again = requests.post(f"{fresh.url}/Bundle", json=bundle, headers=headers)
    assert again.status_code == 200
    assert again.headers["Location"] == first.headers["Location"]
    (received,) = fresh.received()
    assert received["id"] == first.json()["id"]
    assert received["entry"] == bundle["entry"]
    assert requests.get(first.headers["Location"].rsplit("/_history", 1)[0]).json() == received


def test_post_resource_and_transaction(fresh):
    comm = case_bundle()["entry"][0]["resource"]
    created = requests.post(f"{fresh.url}/Communication", json=comm,
                            headers={"Content-Type": FHIR_JSON})
    assert created.status_code == 201
    assert created.json()["id"]
    wrong = requests.post(f"{fresh.url}/Observation", json=comm,
                          headers={"Content-Type": FHIR_JSON})
    assert wrong.status_code == 400

    entries = case_bundle()["entry"]
    entries[1]["resource"]["inResponseTo"] = [{"reference": entries[0]["fullUrl"]}]
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{**e, "request": {"method": "POST", "url": "Communication"}} for e in entries],
    }
    answer = requests.post(f"{fresh.url}/", json=transaction, headers={"Content-Type": FHIR_JSON})
    assert answer.status_code == 200
    body = answer.json()
    assert body["type"] == "transaction-response"
    assert [e["response"]["status"] for e in body["entry"]] == ["201 Created"] * 3
    received = fresh.received()
    assert len(received) == 4
    first_id = body["entry"][0]["response"]["location"].split("/")[1]
    assert received[2]["inResponseTo"] == [{"reference": f"Communication/{first_id}"}]
    assert [r["payload"] for r in received[1:]] == [e["resource"]["payload"] for e in entries]
    collection = requests.post(f"{fresh.url}/", json=case_bundle(),
                               headers={"Content-Type": FHIR_JSON})
    assert collection.status_code == 400  # only transaction/batch go to the base


def test_runs_as_a_process_and_exposes_received_resources():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "carematrix_ops.demo.emr", "--port", str(port), "--data", str(DATA),
         "--token", TOKEN],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{base}/metadata", timeout=1).raise_for_status()
                break
            except requests.RequestException:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "test FHIR server did not come up"
                time.sleep(0.1)
        s = fetch_summary(base, "P20261102", headers={"Authorization": f"Bearer {TOKEN}"})
        assert s.name == "李秀英"
        posted = requests.post(
            f"{base}/Bundle", json=case_bundle(),
            headers={"Content-Type": FHIR_JSON, "Authorization": f"Bearer {TOKEN}"},
        )
        assert posted.status_code == 201
        received = requests.get(f"http://127.0.0.1:{port}/_test/received", timeout=5).json()
        assert [r["resourceType"] for r in received] == ["Bundle"]
        assert received[0]["identifier"]["value"] == "CASE-7"
    finally:
        proc.terminate()
        proc.wait(10)
