"""The demo hospital's PACS: a real Orthanc with its DICOMweb plugin, and the test suite's
stand-in for the hospital's PACS.

``carematrix up`` (demo mode) runs Orthanc under its supervisor with the config
:func:`write_config` puts in ``var/demo-pacs/`` and loads one CT of the demo patient
(:func:`load_demo_study`), so ``!images`` can be tried without a hospital. Tests start their
own with :func:`start_orthanc`.

A fake server would only answer what we already believe the protocol says; Orthanc is a
production PACS and disagrees with us in the ways real ones do (multipart framing, JSON
value types, 204 vs. empty arrays). It runs as a child process on loopback ports with all
state under one directory, so parallel runs and the other suites on this machine never
share a port or a database.

Needs the Debian packages ``orthanc`` and ``orthanc-dicomweb``; without them the demo
hospital simply has no PACS (:func:`installed`).
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
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from carematrix_ops.demo import DEMO_ACCESSION, DEMO_PATIENT, DEMO_PATIENT_NAME

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL_HINT = "apt-get install orthanc orthanc-dicomweb"
START_TIMEOUT = 30.0
DICOMWEB_ROOT = "/dicom-web"
CONFIG_NAME = "orthanc.json"
# Without it Orthanc's messages and QIDO-RS answers fall back to Latin-1.
ORTHANC_ENV = {"LANG": "C.UTF-8"}

# pydicom's bundled files that Orthanc 1.10 stores and serves back over WADO-RS and that
# bridges.dicom.render draws. None has an AccessionNumber (all are empty), so look them up
# by StudyInstanceUID or upload them through upload_with_accession().
SAMPLE_FILES = (
    "CT_small.dcm",            # CT, 128x128 int16, rescale -1024, no window in the header
    "MR_small.dcm",            # MR, 64x64 int16, window 600/1600
    "examples_rgb_color.dcm",  # US, 240x320 RGB
    "examples_ybr_color.dcm",  # US multi-frame, 30 frames 240x320 JPEG baseline YBR_FULL_422
)
DEMO_SAMPLE = "CT_small.dcm"


def installed() -> bool:
    """Whether this machine can run the PACS at all (the demo hospital goes without one)."""
    return ORTHANC_BINARY.exists() and DICOMWEB_PLUGIN.exists()


@dataclass
class OrthancClient:
    """Orthanc's REST API at ``url``; ``log`` is where its output goes, for error messages."""

    url: str
    log: Path | None = None

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root the appservice is pointed at."""
        return f"{self.url}{DICOMWEB_ROOT}"

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
        if self.log is None:
            return "(no Orthanc log)"
        try:
            text = self.log.read_text("utf-8", "replace")
        except OSError:
            return "(no Orthanc log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass(kw_only=True)
class Orthanc(OrthancClient):
    """An Orthanc this module started and owns (tests); ``stop()`` ends it."""

    process: subprocess.Popen[bytes]
    workdir: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def orthanc_config(workdir: Path, http_port: int, name: str) -> dict:
    """Loopback-only, no DICOM listener, no authentication: a PACS for one machine."""
    return {
        "Name": name,
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": http_port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        # Without it QIDO-RS answers in Latin-1 and silently drops names it cannot encode
        # (a Chinese PatientName comes back empty).
        "DefaultEncoding": "Utf8",
        "SyncStorageArea": False,
        "SaveJobs": False,
        "HttpThreadsCount": 10,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": f"{DICOMWEB_ROOT}/", "EnableWado": False},
    }


def write_config(workdir: Path, http_port: int, name: str = "carematrix-demo-pacs") -> Path:
    """Write CONFIG_NAME into ``workdir`` (where the PACS keeps its state too)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / CONFIG_NAME
    text = json.dumps(orthanc_config(workdir, http_port, name), indent=2)
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text(text, "utf-8")
    tmp.replace(config_path)
    return config_path


def argv(config_path: Path) -> list[str]:
    """The command line that runs Orthanc with a config from :func:`write_config`."""
    return [str(ORTHANC_BINARY), str(config_path)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str, accept: str | None = None) -> bool:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            response.read()
            return response.status in (200, 204)
    except (urllib.error.URLError, OSError):
        return False


def start_orthanc(workdir: Path) -> Orthanc:
    """Start Orthanc with DICOMweb on a free port, state under ``workdir``; raises with the
    log tail if it is not answering within ``START_TIMEOUT`` seconds.

    Another process can grab the port between our choosing it and Orthanc binding it (other
    suites run on this machine), so that one failure is retried with a fresh port.
    """
    if not installed():
        raise RuntimeError(
            f"Orthanc with DICOMweb is needed ({ORTHANC_BINARY}, {DICOMWEB_PLUGIN}); "
            f"install the Debian packages: {INSTALL_HINT}"
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
    http_port = _free_port()
    config_path = write_config(workdir, http_port, "carematrix-test")
    log_path = workdir / "orthanc.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv(config_path), cwd=workdir,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **ORTHANC_ENV},
        )
    return Orthanc(url=f"http://127.0.0.1:{http_port}", log=log_path, process=process,
                   workdir=workdir)


def sample_files() -> list[Path]:
    """The sample files listed in SAMPLE_FILES, as paths inside the installed pydicom."""
    paths = []
    for name in SAMPLE_FILES:
        found = get_testdata_file(name)
        if found is None:
            raise RuntimeError(f"pydicom's sample file {name} is missing from this install")
        paths.append(Path(str(found)))
    return paths


def upload_with_accession(orthanc: OrthancClient, path: Path | str, accession: str, patient_id: str,
                          patient_name: str = DEMO_PATIENT_NAME) -> str:
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


def load_demo_study(orthanc: OrthancClient) -> str:
    """Put the demo patient's CT into the demo PACS under the demo accession; safe at every
    start (the same upload is AlreadyStored). Returns its StudyInstanceUID."""
    found = get_testdata_file(DEMO_SAMPLE)
    if found is None:
        raise RuntimeError(f"pydicom's sample file {DEMO_SAMPLE} is missing from this install")
    return upload_with_accession(orthanc, Path(str(found)), DEMO_ACCESSION, DEMO_PATIENT)
