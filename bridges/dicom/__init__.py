"""DICOM images rendered for people reading a chat room, not for diagnosis.

A chat client shows PNG or JPEG, so a key image has to be turned into 8-bit pixels the way
a viewer would show it first: modality LUT, the window the modality chose (or a preset a
clinician asked for), the right polarity and colour space, at a size a phone can load.
"""

from __future__ import annotations

from bridges.dicom.render import PRESETS, DicomRenderError, Rendered, render

__all__ = ["PRESETS", "DicomRenderError", "Rendered", "render"]
