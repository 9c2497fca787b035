"""How pushed FHIR resources are keyed and prioritised in the durable inbox: a version is
delivered once however often it is sent, a changed resource is news, and critical results
jump the queue."""

from __future__ import annotations

import json

from appservice.clinical.fhir_intake import _critical, alert_path, inbox_key


def observation(value: float, flag: str, version: str | None = None) -> dict:
    resource = {
        "resourceType": "Observation", "id": "k1", "status": "final",
        "code": {"text": "Potassium"}, "subject": {"reference": "Patient/P1"},
        "valueQuantity": {"value": value, "unit": "mmol/L"},
        "interpretation": [{"coding": [{"code": flag}]}],
    }
    if version:
        resource["meta"] = {"versionId": version}
    return resource


def raw(resource: dict) -> bytes:
    return json.dumps(resource, sort_keys=True).encode()


def test_a_versioned_resource_is_keyed_by_its_version():
    r = observation(6.8, "HH", "3")
    assert inbox_key(r, raw(r)) == "Observation-k1-v3"
    assert "/" not in alert_path("LIS", inbox_key(r, raw(r)))[len("/_carematrix/alerts/LIS/"):]


def test_without_a_version_the_content_decides():
    first, same, changed = observation(6.8, "HH"), observation(6.8, "HH"), observation(6.9, "HH")
    assert inbox_key(first, raw(first)) == inbox_key(same, raw(same))
    assert inbox_key(first, raw(first)) != inbox_key(changed, raw(changed))


def test_only_critical_results_are_urgent():
    assert _critical({"resource": observation(6.8, "HH")})
    assert _critical({"resource": observation(2.1, "LL")})
    assert not _critical({"resource": observation(5.6, "H")})
    assert not _critical({"reference": "Observation/k1"})  # id-only: not known until read
    assert not _critical({"resource": {"resourceType": "Encounter", "id": "e1", "status": "in-progress"}})
