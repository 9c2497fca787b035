"""Per-viewer image watermarking: every copy of a clinical image shown to a person carries that
person's name, staff number, Matrix ID and the minute, visibly, and a keyed hidden pattern
that survives rescaling, cropping and re-encoding, so a leaked copy can be traced back to the
viewer even after the visible text has been cropped or cleaned away.

Pure Pillow + numpy; no Synapse imports, so it can be tested and benchmarked on its own.
"""

from carematrix.watermark.model import MediaRejected, Rendered, TraceResult, Viewer
from carematrix.watermark.render import render_for_viewer
from carematrix.watermark.similarity import similarity
from carematrix.watermark.sniff import sniff_image
from carematrix.watermark.trace import trace

__all__ = [
    "MediaRejected",
    "Rendered",
    "TraceResult",
    "Viewer",
    "render_for_viewer",
    "similarity",
    "sniff_image",
    "trace",
]
