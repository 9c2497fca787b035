"""The demo hospital's own systems, so a newcomer's ``make run`` shows the clinical flow
(case summaries, key images, archiving) without a hospital's EMR or PACS.

``emr`` is a small FHIR R4 server with the demo patients (``data/hospital.json``) that also
accepts case archives; ``pacs`` runs a real Orthanc (Debian packages) holding one CT. Both
double as the test suite's stand-ins for the hospital's systems.
"""

from __future__ import annotations

import json
from pathlib import Path

DEMO_DATA = Path(__file__).resolve().parent / "data" / "hospital.json"
# The demo patient with a summary in the EMR and a CT in the PACS, and that CT's accession.
DEMO_PATIENT = "P20261101"
DEMO_PATIENT_NAME = "王建国"
DEMO_ACCESSION = "A20261125001"
MRN_SYSTEM = "urn:carematrix:mrn"


def demo_patients() -> list[str]:
    """"<MRN> <name>" of each patient in the demo EMR, read from its data so the start banner
    never advertises a patient the EMR does not have."""
    bundle = json.loads(DEMO_DATA.read_text(encoding="utf-8"))
    found = []
    for entry in bundle.get("entry", []):
        patient = entry.get("resource", {})
        if patient.get("resourceType") != "Patient":
            continue
        mrns = [i["value"] for i in patient.get("identifier", []) if i.get("system") == MRN_SYSTEM]
        names = [n["text"] for n in patient.get("name", []) if n.get("text")]
        found.append(" ".join([*(mrns[:1] or [patient["id"]]), *names[:1]]))
    return found
