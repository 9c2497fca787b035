"""DICOMweb (QIDO-RS, WADO-RS) client for fetching key images of a study from the PACS.

Kept apart from ``bridges.dicom`` so the network side can be tested and swapped (another
PACS, a proxy) without touching how images are drawn, and vice versa.
"""

from __future__ import annotations

from bridges.dicomweb.client import (
    DicomWebClient,
    DicomWebError,
    Instance,
    Series,
    Study,
    find_by_reference,
    parse_multipart_related,
)

__all__ = [
    "DicomWebClient",
    "DicomWebError",
    "Instance",
    "Series",
    "Study",
    "find_by_reference",
    "parse_multipart_related",
]
