"""The DICOMweb client against a real Orthanc PACS (carematrix_ops/demo/pacs.py), plus the pure parts of
the client (multipart framing, reference parsing) that need no server."""

from __future__ import annotations

import datetime as dt
import io
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from bridges.dicom import render
from bridges.dicomweb import (
    DicomWebClient,
    DicomWebError,
    Series,
    find_by_reference,
    parse_multipart_related,
)
from carematrix_ops.demo.pacs import Orthanc, sample_files, start_orthanc, upload_with_accession


@dataclass
class Loaded:
    """What the module's Orthanc holds, as the tests expect to find it."""

    ct_study: str  # CT_small under accession ACC-CT-1, patient PID-1 王建国
    ct_sop: str
    key_study: str  # a CT series of 5, an MR series of 3 and an SR, accession ACC-KEY
    samples: dict[str, pydicom.Dataset]  # raw sample files by name, original UIDs


def _sample(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None
    return Path(str(path))


def _copy_into(source: str, study_uid: str, series_uid: str, series_number: int,
               instance_number: int) -> bytes:
    ds = pydicom.dcmread(_sample(source))
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.AccessionNumber = "ACC-KEY"
    ds.PatientID = "PID-KEY"
    ds.PatientName = "Key^Images"
    ds.StudyDate = "20240315"
    ds.StudyDescription = "key image study"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _upload_key_study(orthanc: Orthanc) -> str:
    """Series uploaded in shuffled instance order, so picking the middle has to sort by
    Instance Number rather than trust the PACS's order."""
    study = generate_uid()
    ct, mr, sr = generate_uid(), generate_uid(), generate_uid()
    files = [_copy_into("CT_small.dcm", study, ct, 1, number) for number in (1, 2, 3, 4, 5)]
    files += [_copy_into("MR_small.dcm", study, mr, 2, number) for number in (10, 20, 30)]
    files.append(_copy_into("test-SR.dcm", study, sr, 3, 1))
    random.Random(7).shuffle(files)
    for data in files:
        assert orthanc.upload(data)["Status"] == "Success"
    return study


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def loaded(orthanc: Orthanc) -> Loaded:
    samples = {}
    for path in sample_files():
        assert orthanc.upload(path)["Status"] == "Success", orthanc.log_tail()
        samples[path.name] = pydicom.dcmread(path)
    ct_study = upload_with_accession(orthanc, _sample("CT_small.dcm"), "ACC-CT-1", "PID-1")
    return Loaded(ct_study=ct_study, ct_sop=_only_sop(orthanc, ct_study),
                  key_study=_upload_key_study(orthanc), samples=samples)


def _only_sop(orthanc: Orthanc, study_uid: str) -> str:
    """The SOP Instance UID of a one-instance study, read through Orthanc's own REST API so
    the DICOMweb client is not checked against itself."""
    studies = orthanc.get_json("/studies?expand")
    (study_id,) = [s["ID"] for s in studies if s["MainDicomTags"]["StudyInstanceUID"] == study_uid]
    (instance,) = orthanc.get_json(f"/studies/{study_id}/instances")
    return instance["MainDicomTags"]["SOPInstanceUID"]


@pytest.fixture
async def client(orthanc: Orthanc) -> AsyncIterator[DicomWebClient]:
    async with DicomWebClient(orthanc.dicomweb) as dicomweb:
        yield dicomweb


# --- QIDO-RS ----------------------------------------------------------------------------------

async def test_find_by_accession(client, loaded):
    studies = await client.find_studies(**find_by_reference("ACC-CT-1"))

    assert len(studies) == 1
    study = studies[0]
    assert study.study_uid == loaded.ct_study
    assert study.accession == "ACC-CT-1"
    assert study.patient_id == "PID-1"
    assert study.patient_name == "王建国"
    assert study.modalities == ("CT",)
    assert study.date == dt.date(2004, 1, 19)
    assert study.description == "e+1"


async def test_find_by_study_uid(client, loaded):
    mr = loaded.samples["MR_small.dcm"]
    reference = find_by_reference(f"  {mr.StudyInstanceUID} ")
    assert reference == {"study_uid": mr.StudyInstanceUID}

    studies = await client.find_studies(**reference)

    assert [s.study_uid for s in studies] == [mr.StudyInstanceUID]
    assert studies[0].patient_name == "CompressedSamples^MR1"
    assert studies[0].accession == ""
    assert studies[0].modalities == ("MR",)


async def test_find_by_patient_id(client, loaded):
    studies = await client.find_studies(patient_id="PID-KEY")

    assert [s.study_uid for s in studies] == [loaded.key_study]
    assert set(studies[0].modalities) == {"CT", "MR", "SR"}


async def test_missing_study_is_an_empty_list(client, loaded):
    assert await client.find_studies(accession="NO-SUCH-ACC") == []
    assert await client.find_studies(study_uid="1.2.826.0.1.3680043.99.404") == []
    assert await client.series("1.2.826.0.1.3680043.99.404") == []


async def test_searches_refuse_wildcards_and_empty_criteria(client):
    with pytest.raises(ValueError, match="wildcards"):
        await client.find_studies(accession="*")
    with pytest.raises(ValueError, match="needs"):
        await client.find_studies()


async def test_series_and_instances(client, loaded):
    series = await client.series(loaded.key_study)

    assert [(s.modality, s.number, s.instances) for s in series] == [
        ("CT", 1, 5), ("MR", 2, 3), ("SR", 3, 1)]
    instances = await client.instances(loaded.key_study, series[1].series_uid)
    assert [i.number for i in instances] == [10, 20, 30]
    assert {(i.study_uid, i.series_uid) for i in instances} == {
        (loaded.key_study, series[1].series_uid)}
    assert all(i.sop_uid for i in instances)


# --- WADO-RS ----------------------------------------------------------------------------------

async def test_retrieve_instance_returns_the_dicom_object(client, loaded):
    series = await client.series(loaded.ct_study)
    instances = await client.instances(loaded.ct_study, series[0].series_uid)
    assert [i.sop_uid for i in instances] == [loaded.ct_sop]

    data = await client.retrieve_instance(loaded.ct_study, series[0].series_uid, loaded.ct_sop)

    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.SOPInstanceUID == loaded.ct_sop
    assert ds.AccessionNumber == "ACC-CT-1"
    assert str(ds.PatientName) == "王建国"
    rendered = render(data)
    assert (rendered.width, rendered.height) == (128, 128)


async def test_retrieve_transcodes_unless_asked_for_the_stored_syntax(client, loaded):
    us = loaded.samples["examples_ybr_color.dcm"]
    ids = (us.StudyInstanceUID, us.SeriesInstanceUID, us.SOPInstanceUID)

    default = pydicom.dcmread(io.BytesIO(await client.retrieve_instance(*ids)))
    stored = pydicom.dcmread(io.BytesIO(await client.retrieve_instance(*ids,
                                                                       transfer_syntax="*")))

    assert default.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert stored.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert render(stored).width == render(default).width == 320


async def test_every_sample_round_trips_and_renders(client, loaded):
    for name, original in loaded.samples.items():
        data = await client.retrieve_instance(original.StudyInstanceUID,
                                              original.SeriesInstanceUID,
                                              original.SOPInstanceUID)
        assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == original.SOPInstanceUID, name
        assert render(data, max_side=256).width > 0, name


async def test_unknown_instance_is_a_dicomweb_error_naming_url_and_status(client, loaded):
    series = await client.series(loaded.ct_study)
    with pytest.raises(DicomWebError) as caught:
        await client.retrieve_instance(loaded.ct_study, series[0].series_uid,
                                       "1.2.826.0.1.3680043.99.404")
    message = str(caught.value)
    assert "HTTP 404" in message
    assert "/instances/1.2.826.0.1.3680043.99.404" in message
    assert message.startswith(f"GET {client.base_url}/studies/")


async def test_unknown_path_is_a_dicomweb_error(orthanc):
    async with DicomWebClient(orthanc.url + "/no-such-root") as wrong:
        with pytest.raises(DicomWebError, match=r"/no-such-root/studies\?AccessionNumber=X.* "
                                                r"failed: HTTP 404"):
            await wrong.find_studies(accession="X")


async def test_unreachable_server_is_a_dicomweb_error():
    async with DicomWebClient("http://127.0.0.1:9/dicom-web", timeout=5) as nowhere:
        with pytest.raises(DicomWebError, match="127.0.0.1:9/dicom-web/studies"):
            await nowhere.find_studies(accession="X")


async def test_uids_are_checked_before_they_reach_a_url(client):
    with pytest.raises(ValueError, match="not a DICOM UID"):
        await client.series("../../system")


async def test_a_shared_session_is_left_open(orthanc, loaded):
    async with aiohttp.ClientSession() as session:
        async with DicomWebClient(orthanc.dicomweb, session=session) as shared:
            assert await shared.find_studies(accession="ACC-CT-1")
        assert not session.closed


# --- key images ---------------------------------------------------------------------------

async def test_key_images_pick_the_middle_instance_of_each_image_series(client, loaded):
    picked = await client.key_images(loaded.key_study)

    assert [(s.modality, i.number) for s, i, _ in picked] == [("CT", 3), ("MR", 20)]
    for series, instance, data in picked:
        assert isinstance(series, Series)
        assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == instance.sop_uid
        rendered = render(data)
        assert rendered.description.startswith(series.modality)
        assert rendered.description.endswith(f"image {instance.number}")

    assert [s.modality for s, _, _ in await client.key_images(loaded.key_study, limit=1)] == [
        "CT"]
    assert await client.key_images(loaded.key_study, limit=0) == []


async def test_key_images_of_a_missing_study_is_empty(client, loaded):
    assert await client.key_images("1.2.826.0.1.3680043.99.404") == []


# --- without a server -----------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("1.2.840.113619.2.55.3.604688119", {"study_uid": "1.2.840.113619.2.55.3.604688119"}),
    (" 1.2 ", {"study_uid": "1.2"}),
    ("A20240315-0042", {"accession": "A20240315-0042"}),
    ("123456", {"accession": "123456"}),
    ("1..2", {"accession": "1..2"}),
    ("1." + "2" * 70, {"accession": "1." + "2" * 70}),
])
def test_find_by_reference(text, expected):
    assert find_by_reference(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "ACC*", "12?4"])
def test_find_by_reference_refuses_empty_and_wildcards(text):
    with pytest.raises(ValueError):
        find_by_reference(text)


def test_multipart_with_quoted_boundary_preamble_and_two_parts():
    body = (b"preamble\r\n--b:1\r\nContent-Type: application/dicom\r\n\r\nFIRST\r\n"
            b"--b:1\r\nContent-Type: application/dicom\r\nContent-Length: 6\r\n\r\nSEC\r\nD"
            b"\r\n--b:1--\r\nepilogue")
    parts = parse_multipart_related(
        body, 'multipart/related; type="application/dicom"; boundary="b:1"')

    assert [content for _, content in parts] == [b"FIRST", b"SEC\r\nD"]
    assert parts[1][0] == {"content-type": "application/dicom", "content-length": "6"}


def test_multipart_with_bare_lf_unquoted_boundary_and_no_close_delimiter():
    body = b"--xyz\nContent-Type: application/dicom\n\nDATA\n--xyz\n"
    parts = parse_multipart_related(body, "multipart/related; boundary=xyz")

    assert parts == [({"content-type": "application/dicom"}, b"DATA")]


def test_multipart_part_without_headers():
    parts = parse_multipart_related(b"--q\r\n\r\nRAW\r\n--q--", "multipart/related; boundary=q")
    assert parts == [({}, b"RAW")]


@pytest.mark.parametrize("body, content_type, problem", [
    (b"--a\r\n\r\nX\r\n--a--", "multipart/related", "no boundary"),
    (b"nothing here", "multipart/related; boundary=a", "does not contain"),
    (b"--a\r\nContent-Type: application/dicom\r\n\r\nX", "multipart/related; boundary=a",
     "truncated"),
])
def test_multipart_errors(body, content_type, problem):
    with pytest.raises(ValueError, match=problem):
        parse_multipart_related(body, content_type)
