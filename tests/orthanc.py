"""A real Orthanc PACS with its DICOMweb plugin, for tests that talk QIDO-RS/WADO-RS.

A fake server would only answer what we already believe the protocol says; Orthanc is a
production PACS and disagrees with us in the ways real ones do (multipart framing, JSON
value types, 204 vs. empty arrays). It runs as a child process on free loopback ports with
all state under the given directory, so parallel runs and the other suites on this machine
never share a port or a database.

Needs the Debian packages ``orthanc`` and ``orthanc-dicomweb``.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT = 30.0

# pydicom's bundled files that Orthanc 1.10 stores and serves back over WADO-RS and that
# bridges.dicom.render draws. None has an AccessionNumber (all are empty), so look them up
# by StudyInstanceUID or upload them through upload_with_accession().
SAMPLE_FILES = (
    "CT_small.dcm",            # CT, 128x128 int16, rescale -1024, no window in the header
    "MR_small.dcm",            # MR, 64x64 int16, window 600/1600
    "examples_rgb_color.dcm",  # US, 240x320 RGB
    "examples_ybr_color.dcm",  # US multi-frame, 30 frames 240x320 JPEG baseline YBR_FULL_422
)


@dataclass
class Orthanc:
    """A running Orthanc; ``url`` is its REST API, ``dicomweb`` the DICOMweb root."""

    url: str
    dicomweb: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log: Path = field(default_factory=Path)

    def upload(self, path_or_bytes: Path | str | bytes) -> dict:
        """Store one DICOM file through the REST API (not STOW-RS, so a bug in our DICOMweb
        client cannot hide a bug in the fixture data)."""
        data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
        request = urllib.request.Request(
            f"{self.url}/instances", data=data, method="POST",
            headers={"Content-Type": "application/dicom"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")
            raise RuntimeError(f"Orthanc refused the upload: HTTP {exc.code} {body}\n"
                               f"{self.log_tail()}") from exc

    def get_json(self, path: str) -> object:
        """REST API read, for tests that check what Orthanc itself holds."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return json.loads(response.read())

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text("utf-8", "replace")
        except OSError:
            return "(no Orthanc log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def _free_ports(count: int) -> list[int]:
    """Hold all sockets open until every port is chosen so the kernel cannot hand out the
    same one twice."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _answers(url: str, accept: str | None = None) -> bool:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            response.read()
            return response.status in (200, 204)
    except (urllib.error.URLError, OSError):
        return False


def start_orthanc(workdir: Path) -> Orthanc:
    """Start Orthanc with DICOMweb on free ports, state under ``workdir``; raises with the
    log tail if it is not answering within ``START_TIMEOUT`` seconds.

    Another process can grab a port between our choosing it and Orthanc binding it (other
    suites run on this machine), so that one failure is retried with fresh ports.
    """
    if not ORTHANC_BINARY.exists() or not DICOMWEB_PLUGIN.exists():
        raise RuntimeError(
            f"Orthanc with DICOMweb is needed ({ORTHANC_BINARY}, {DICOMWEB_PLUGIN}); "
            "install the Debian packages: apt-get install orthanc orthanc-dicomweb"
        )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        orthanc = _launch(workdir)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if orthanc.process.poll() is not None:
                break
            if _answers(f"{orthanc.url}/system") and _answers(f"{orthanc.dicomweb}/studies",
                                                              "application/dicom+json"):
                return orthanc
            time.sleep(0.2)
        else:
            orthanc.stop()
            raise RuntimeError(f"Orthanc did not answer on {orthanc.url} within "
                               f"{START_TIMEOUT:.0f} s:\n{orthanc.log_tail()}")
        log = orthanc.log_tail()
        if "already in use" not in log or attempt == 2:
            raise RuntimeError(f"Orthanc exited with status {orthanc.process.returncode} "
                               f"during start-up:\n{log}")
    raise AssertionError("unreachable")


def _launch(workdir: Path) -> Orthanc:
    http_port, dicom_port = _free_ports(2)
    config = {
        "Name": "carematrix-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": http_port,
        "DicomServerEnabled": False,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        # Without it QIDO-RS answers in Latin-1 and silently drops names it cannot encode
        # (a Chinese PatientName comes back empty).
        "DefaultEncoding": "Utf8",
        "SyncStorageArea": False,
        "SaveJobs": False,
        "HttpThreadsCount": 10,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2), "utf-8")
    log_path = workdir / "orthanc.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(ORTHANC_BINARY), str(config_path)], cwd=workdir,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "LANG": "C.UTF-8"},
        )
    url = f"http://127.0.0.1:{http_port}"
    return Orthanc(url=url, dicomweb=f"{url}/dicom-web", process=process, workdir=workdir,
                   log=log_path)


def sample_files() -> list[Path]:
    """The sample files listed in SAMPLE_FILES, as paths inside the installed pydicom."""
    paths = []
    for name in SAMPLE_FILES:
        found = get_testdata_file(name)
        if found is None:
            raise RuntimeError(f"pydicom's sample file {name} is missing from this install")
        paths.append(Path(str(found)))
    return paths


def upload_with_accession(orthanc: Orthanc, path: Path | str, accession: str, patient_id: str,
                          patient_name: str = "王建国") -> str:
    """Upload a sample as a study a user could look up by accession number, with a Chinese
    UTF-8 patient name so the character-set path is exercised. Returns its StudyInstanceUID.

    The study, series and instance get new UIDs derived from the file's and the accession,
    so this never collides with the raw sample uploaded by ``sample_files()`` users (Orthanc
    would keep the first copy and the accession would silently be missing), and uploading
    the same file under the same accession twice is harmless.
    """
    ds = pydicom.dcmread(path)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, generate_uid(entropy_srcs=[str(ds[keyword].value), accession]))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.AccessionNumber = accession
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    stored = orthanc.upload(buffer.getvalue())
    if stored.get("Status") not in ("Success", "AlreadyStored"):
        raise RuntimeError(f"Orthanc did not store {path}: {stored}")
    return str(ds.StudyInstanceUID)
