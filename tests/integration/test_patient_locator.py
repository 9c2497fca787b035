"""Where a patient lies (appservice.clinical.locate) against the demo hospital's real FHIR
server over HTTP: ADT first, else the in-progress Encounter's ward, found through the Patient's
MRN when the FHIR id differs (P20261102 is Patient/20031) and through the Location's
identifier when the Encounter points at an opaque Location id."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appservice.clinical.locate import Located, LocateFailed, PatientLocator
from appservice.main import _fhir_reader
from carematrix.policy.holder import PolicyHolder
from carematrix_ops.demo import DEMO_DATA
from carematrix_ops.demo.emr import FhirTestServer, start_fhir_server
from tests.ports import free_port

POLICIES = Path(__file__).resolve().parents[2] / "policies"
TOKEN = "locator-token-81c4"


class Registry:
    """The clinical store's patient registry, as ADT left it."""

    def __init__(self, **wards: str | None) -> None:
        self.wards = wards

    async def patient(self, patient_id: str) -> dict[str, Any] | None:
        if patient_id not in self.wards:
            return None
        return {"name": "?", "ward": self.wards[patient_id], "bed": None}


@pytest.fixture(scope="module")
def emr() -> Iterator[FhirTestServer]:
    server = start_fhir_server(DEMO_DATA, token=TOKEN)
    yield server
    server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def locator(registry: Registry, fetch: Any) -> PatientLocator:
    return PatientLocator(registry, PolicyHolder(POLICIES), fetch)  # type: ignore[arg-type]


async def test_adt_wins_and_the_fhir_server_is_not_asked(emr: FhirTestServer, http: aiohttp.ClientSession):
    before = len(emr.requests())
    found = await locator(Registry(P20261101="ICU"), _fhir_reader(http, emr.url, TOKEN)).ward_of("P20261101")
    assert found == Located("ICU", "ADT") and found.how == "from the last ADT message"
    assert len(emr.requests()) == before


async def test_without_adt_the_current_encounter_gives_the_ward(emr: FhirTestServer, http: aiohttp.ClientSession):
    found = await locator(Registry(), _fhir_reader(http, emr.url, TOKEN)).ward_of("P20261101")
    assert found == Located("5A", "FHIR Encounter/enc-1101-2")  # the finished outpatient visit is not it
    assert found.how == "from the EMR's current encounter"


async def test_a_patient_whose_fhir_id_is_not_the_mrn_is_found_by_mrn(emr: FhirTestServer, http: aiohttp.ClientSession):
    found = await locator(Registry(), _fhir_reader(http, emr.url, TOKEN)).ward_of("P20261102")
    assert found == Located("ICU", "FHIR Encounter/enc-20031-1")


@pytest.mark.parametrize("adt_ward", [None, "7B"], ids=["discharged", "ward-not-in-policy"])
async def test_an_adt_ward_the_policy_cannot_route_falls_through_to_the_emr(
    emr: FhirTestServer, http: aiohttp.ClientSession, adt_ward: str | None,
):
    found = await locator(Registry(P20261101=adt_ward), _fhir_reader(http, emr.url, TOKEN)).ward_of("P20261101")
    assert found == Located("5A", "FHIR Encounter/enc-1101-2")


async def test_a_patient_nobody_knows_has_no_ward(emr: FhirTestServer, http: aiohttp.ClientSession):
    assert await locator(Registry(), _fhir_reader(http, emr.url, TOKEN)).ward_of("P99999999") is None


async def test_without_a_fhir_server_only_adt_counts():
    assert await locator(Registry(), None).ward_of("P20261101") is None
    assert await locator(Registry(P20261101="5A"), None).ward_of("P20261101") == Located("5A", "ADT")


async def test_a_refusing_fhir_server_is_a_final_failure(emr: FhirTestServer, http: aiohttp.ClientSession):
    with pytest.raises(LocateFailed) as failed:
        await locator(Registry(), _fhir_reader(http, emr.url, "wrong-token")).ward_of("P20261101")
    assert "HTTP 401" in str(failed.value) and not failed.value.transient


async def test_an_unreachable_fhir_server_is_a_passing_failure(http: aiohttp.ClientSession):
    with pytest.raises(LocateFailed) as failed:
        await locator(Registry(), _fhir_reader(http, f"http://127.0.0.1:{free_port()}/fhir", TOKEN)).ward_of("P20261101")
    assert "cannot reach the FHIR server" in str(failed.value) and failed.value.transient
