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
from tests.push_gateway import PushGateway
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


@pytest.fixture(scope="session")
def push_gateway() -> Iterator[PushGateway]:
    """The hospital's push gateway, on loopback (which Synapse reaches only because the
    deployment opens its address)."""
    gateway = PushGateway()
    yield gateway
    gateway.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "worker_pass: also run on the worker deployment (carematrix up --workers: PostgreSQL, Redis, "
        "Synapse workers behind nginx); select that pass with -k workers",
    )
    config.addinivalue_line("markers", "workers_only: runs on the worker deployment only (tests/e2e/test_workers.py)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The worker deployment (stack[workers]) runs the suites marked ``worker_pass`` only: it
    is many processes, and the suites chosen cover what workers change (room classes,
    protection, audit, reloads, on-call, clinical)."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("stack") if callspec is not None else None
        on_workers = param == "workers"
        if on_workers and item.get_closest_marker("worker_pass") is None and item.get_closest_marker("workers_only") is None:
            drop.append(item)
        elif param in ("sqlite", "postgres") and item.get_closest_marker("workers_only") is not None:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session", params=["sqlite", "postgres", "workers"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, clinical_systems: ClinicalSystems,
    push_gateway: PushGateway,
) -> Iterator[RunningStack]:
    running = start_stack(
        request.param, tmp_path_factory.mktemp(f"stack-{request.param}"),
        fhir_server=clinical_systems.fhir.url, dicomweb=clinical_systems.orthanc.dicomweb,
        emr_archive=clinical_systems.fhir.url, systems_token=SYSTEMS_TOKEN, push_gateway=push_gateway.url,
    )
    yield running
    stop_stack(running)
