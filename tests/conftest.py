"""Shared fixtures. One real homeserver per database backend serves the whole run, connected
to the hospital systems it talks to: a FHIR R4 server (summaries, archive) and a real Orthanc
PACS with its DICOMweb plugin, both the demo hospital's (carematrix_ops.demo) started privately."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from carematrix_ops.demo import DEMO_ACCESSION, DEMO_DATA, DEMO_PATIENT
from carematrix_ops.demo.emr import FhirTestServer, start_fhir_server
from carematrix_ops.demo.pacs import Orthanc, start_orthanc, upload_with_accession
from tests.support import RunningStack, start_stack, stop_stack

SYSTEMS_TOKEN = secrets.token_urlsafe(24)


@dataclass
class ClinicalSystems:
    fhir: FhirTestServer
    orthanc: Orthanc
    patient_id: str  # in the FHIR server's data, with a CT study in the PACS
    accession: str
    study_uid: str


@pytest.fixture(scope="session")
def clinical_systems(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClinicalSystems]:
    from pydicom.data import get_testdata_file

    # The hospital's FHIR server wants a bearer token, as a real one would.
    fhir = start_fhir_server(DEMO_DATA, token=SYSTEMS_TOKEN)
    orthanc = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        patient, accession = DEMO_PATIENT, DEMO_ACCESSION
        study_uid = upload_with_accession(orthanc, Path(get_testdata_file("CT_small.dcm")), accession, patient)
        yield ClinicalSystems(fhir, orthanc, patient, accession, study_uid)
    finally:
        orthanc.stop()
        fhir.stop()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, clinical_systems: ClinicalSystems
) -> Iterator[RunningStack]:
    running = start_stack(
        request.param, tmp_path_factory.mktemp(f"stack-{request.param}"),
        fhir_server=clinical_systems.fhir.url, dicomweb=clinical_systems.orthanc.dicomweb,
        emr_archive=clinical_systems.fhir.url, systems_token=SYSTEMS_TOKEN,
    )
    yield running
    stop_stack(running)
