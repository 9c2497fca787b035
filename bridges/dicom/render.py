"""Turn one DICOM image into a PNG or JPEG that looks the way a viewer first shows it.

Raw DICOM pixels are not displayable: CT stores Hounsfield units behind a rescale, the
modality records which slice of a 12- or 16-bit range matters (the window), MONOCHROME1
means "white is zero", colour may be YCbCr or a palette, and a cine loop has dozens of
frames. Skipping any step gives a black, white or inverted square in the chat, which is
worse than no picture because it looks like a finding. The steps follow PS3.3 C.11 (modality
LUT, then VOI LUT or window, then polarity) so the result matches a PACS viewer's default.

Anything we cannot render raises ``DicomRenderError`` with a sentence fit for the chat room
("no image in this DICOM object ...", "... transfer syntax is not supported ..."), because the
person who asked for the image is a clinician, not the integration engineer.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    convert_color_space,
    get_decoder,
)
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian

# (center, width) in modality units (HU for CT), the order DICOM lists them in.
PRESETS: dict[str, tuple[float, float]] = {
    "ct-soft": (40, 400),
    "ct-lung": (-600, 1500),
    "ct-bone": (300, 1500),
    "ct-brain": (40, 80),
}

# Percentiles for images that carry no window: ignoring the extreme 0.5 % on each side keeps
# a few hot pixels or the air outside a scan from flattening everything else to grey.
AUTO_PERCENTILES = (0.5, 99.5)
JPEG_QUALITY = 90

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_FORMATS = {"PNG": ("PNG", "image/png"), "JPEG": ("JPEG", "image/jpeg"),
            "JPG": ("JPEG", "image/jpeg")}
_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
_YBR_AS_RGB = ("YBR_FULL", "YBR_FULL_422")


class DicomRenderError(Exception):
    """The object cannot be shown as a picture; the message is meant for the person who asked
    for it, so it names the reason (not DICOM, no pixels, unsupported compression)."""


@dataclass(frozen=True)
class Rendered:
    """An encoded image plus what a chat message needs to post it without decoding it again
    (``m.image`` wants the mimetype and size) and to tell readers which window they see."""

    data: bytes
    mimetype: str
    width: int
    height: int
    window: tuple[float, float] | None  # (center, width) used; None for colour or VOI LUT
    description: str  # e.g. "CT · W400 L40 · image 12"


def render(dicom: bytes | Dataset, fmt: str = "PNG", max_side: int = 1024,
           window: tuple[float, float] | None = None) -> Rendered:
    """Render the image (the middle frame of a multi-frame object) as 8-bit PNG or JPEG.

    ``window`` is a (center, width) override in modality units, e.g. ``PRESETS["ct-lung"]``,
    for when the clinician wants another tissue than the one the modality chose; it is
    ignored for colour images, which have no window. Mistakes by the caller (unknown format,
    non-positive size or width) raise ``ValueError``; problems with the object itself raise
    ``DicomRenderError``.
    """
    image_format, mimetype = _output_format(fmt)
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    if window is not None and not (math.isfinite(window[0]) and window[1] > 0):
        raise ValueError(f"window must be a finite (center, width > 0), not {window!r}")

    ds = dicom if isinstance(dicom, Dataset) else _read(dicom)
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise DicomRenderError(f"no image in this DICOM object (SOP class {_sop_class(ds)})")

    frames = _frame_count(ds)
    index = frames // 2
    pixels, photometric = _decode(ds, index)

    used: tuple[float, float] | None = None
    if photometric in _GRAYSCALE or (pixels.ndim == 2 and photometric != "PALETTE COLOR"):
        out, used, label = _grayscale(pixels, ds, index, photometric, window)
    else:
        out, label = _colour(pixels, ds, photometric)

    image = _fit(Image.fromarray(out), max_side)
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, "PNG")

    parts = [str(ds.get("Modality") or "DICOM"), label]
    if (number := ds.get("InstanceNumber")) not in (None, ""):
        parts.append(f"image {number}")
    if frames > 1:
        parts.append(f"frame {index + 1} of {frames}")
    return Rendered(data=buffer.getvalue(), mimetype=mimetype, width=image.width,
                    height=image.height, window=used, description=" · ".join(parts))


def _output_format(fmt: str) -> tuple[str, str]:
    try:
        return _FORMATS[fmt.upper()]
    except KeyError:
        raise ValueError(f"unsupported output format {fmt!r}; use PNG or JPEG") from None


def _read(data: bytes) -> Dataset:
    """Parse strictly (``force=False``): guessing at a headerless blob would render garbage
    from a file that is not an image at all, such as a PDF a user attached by mistake."""
    if not data:
        raise DicomRenderError("empty input: expected a DICOM file")
    try:
        return pydicom.dcmread(io.BytesIO(bytes(data)), force=False)
    except InvalidDicomError as exc:
        raise DicomRenderError(
            "not a DICOM file (no 'DICM' file meta header); expected DICOM Part-10 bytes"
        ) from exc
    except Exception as exc:  # pydicom raises many types for a damaged file
        raise DicomRenderError(f"unreadable DICOM file: {exc}") from exc


def _sop_class(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    if not uid:
        return "unknown"
    uid = UID(str(uid))
    return f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)


def _syntax_label(uid: UID) -> str:
    return f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)


def _transfer_syntax(ds: Dataset) -> UID:
    """Datasets built in memory often have no file meta; their pixels are then native, and
    only the byte order matters for decoding, so the encoding they were read with decides."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return UID(str(uid))
    _implicit, little_endian = ds.original_encoding
    return ExplicitVRBigEndian if little_endian is False else ExplicitVRLittleEndian


def _frame_count(ds: Dataset) -> int:
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as exc:
        raise DicomRenderError(f"invalid Number of Frames {ds.get('NumberOfFrames')!r}") from exc
    return max(frames, 1)


def _decode(ds: Dataset, index: int) -> tuple[np.ndarray, str]:
    """Decode one frame only (a cine loop can be hundreds of MB) and report the photometric
    interpretation of the result, which differs from the header when the decoder already
    converted YCbCr to RGB."""
    syntax = _transfer_syntax(ds)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomRenderError(
            f"transfer syntax {_syntax_label(syntax)} is not supported for rendering"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise DicomRenderError(
            f"transfer syntax {_syntax_label(syntax)} is not supported: no decoder for it is "
            f"installed ({missing})"
        )
    try:
        options: dict[str, Any] = as_pixel_options(ds)
        pixels, properties = decoder.as_array(ds, index=index, **options)
    except Exception as exc:  # decoders raise RuntimeError, ValueError, AttributeError, ...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DicomRenderError(
            f"could not decode the pixel data ({_syntax_label(syntax)}): {reason}"
        ) from exc
    photometric = str(properties.get("photometric_interpretation")
                      or ds.get("PhotometricInterpretation") or "").strip().upper()
    if not photometric:
        photometric = "MONOCHROME2" if pixels.ndim == 2 else "RGB"
    return pixels, photometric


def _functional_item(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """Enhanced multi-frame objects (modern CT/MR) keep rescale and window per frame in
    functional groups instead of the top level; the per-frame item wins over the shared one."""
    for groups, position in (("PerFrameFunctionalGroupsSequence", index),
                             ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and position < len(items):
            sequence = items[position].get(keyword)
            if sequence:
                return sequence[0]
    return None


def _number(value: object) -> float | None:
    """First value of a possibly multi-valued DS/IS element (PS3.3 C.11.2.1.2 allows several
    windows; the first is the modality's preferred one)."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _modality_values(pixels: np.ndarray, ds: Dataset, index: int) -> np.ndarray:
    """Stored values to modality units (HU for CT): windows are defined on these."""
    if ds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    source = _functional_item(ds, index, "PixelValueTransformationSequence") or ds
    slope = _number(source.get("RescaleSlope"))
    intercept = _number(source.get("RescaleIntercept"))
    values = pixels.astype(np.float64)
    if slope is not None and slope != 1:
        values *= slope
    if intercept:
        values += intercept
    return values


def _voi(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT) and C.11.2.1.3.1 (SIGMOID) onto 0-255."""
    if function == "SIGMOID":
        with np.errstate(over="ignore"):
            scaled = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR" and width > 1:
        scaled = (values - (center - 0.5)) / (width - 1) + 0.5
    elif function == "LINEAR" and width == 1:
        scaled = (values > center - 0.5).astype(np.float64)
    else:
        scaled = (values - center) / width + 0.5
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _object_window(ds: Dataset, index: int) -> tuple[float, float, str] | None:
    source = _functional_item(ds, index, "FrameVOILUTSequence") or ds
    center = _number(source.get("WindowCenter"))
    width = _number(source.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = str(source.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    return center, width, function


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """A VOI LUT Sequence (common on CR/DX): scaled by the LUT's own output range, since many
    writers declare 16 bits per entry and fill only 12."""
    try:
        item = ds.VOILUTSequence[0]
        entries = int(item.LUTDescriptor[0]) or 65536
        first = int(item.LUTDescriptor[1])
        table = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds).astype(np.float64)
        mapped = apply_voi(np.rint(values).astype(np.int64), ds).astype(np.float64)
    except Exception:  # a damaged LUT should not stop the picture: the caller auto-windows
        return None
    low, high = float(table.min()), float(table.max())
    if high <= low:
        return None
    return np.rint((mapped - low) / (high - low) * 255.0).astype(np.uint8)


def _auto_window(values: np.ndarray, raw: np.ndarray, ds: Dataset) -> tuple[float, float]:
    """Robust window for objects without one; padding (the area outside a CT's field of view)
    is left out so it cannot drag the window down to itself."""
    sample = values
    padding = _number(ds.get("PixelPaddingValue"))
    if padding is not None:
        kept = values[raw != padding]
        if kept.size:
            sample = kept
    sample = sample[np.isfinite(sample)]
    if not sample.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(sample, AUTO_PERCENTILES))
    if high <= low:
        low, high = float(sample.min()), float(sample.max())
    if high <= low:
        return low, 1.0
    return (low + high) / 2, high - low


def _grayscale(pixels: np.ndarray, ds: Dataset, index: int, photometric: str,
               window: tuple[float, float] | None
               ) -> tuple[np.ndarray, tuple[float, float] | None, str]:
    if pixels.ndim == 3:  # e.g. a single-sample image the decoder returned with a sample axis
        pixels = pixels[..., 0]
    values = _modality_values(pixels, ds, index)
    used: tuple[float, float] | None
    if window is not None:
        center, width = float(window[0]), float(window[1])
        out, used, label = _voi(values, center, width, "LINEAR"), (center, width), ""
    elif (found := _object_window(ds, index)) is not None:
        center, width, function = found
        out, used = _voi(values, center, width, function), (center, width)
        label = "" if function == "LINEAR" else f" {function.lower()}"
    elif ds.get("VOILUTSequence") and (looked_up := _voi_lut(values, ds)) is not None:
        out, used, label = looked_up, None, "VOI LUT"
    else:
        center, width = _auto_window(values, pixels, ds)
        out, used, label = _voi(values, center, width, "LINEAR_EXACT"), (center, width), " auto"
    if used is not None:
        label = f"W{_short(used[1])} L{_short(used[0])}{label}"
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out, used, label


def _colour(pixels: np.ndarray, ds: Dataset, photometric: str) -> tuple[np.ndarray, str]:
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(pixels, ds)
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        except Exception as exc:  # missing or malformed palette
            raise DicomRenderError(f"the palette colour lookup table is unusable: {exc}") from exc
        return _to_8bit(rgb, bits), "palette colour"
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise DicomRenderError(
            f"photometric interpretation {photometric or 'unknown'} with {pixels.shape} pixels "
            "is not supported"
        )
    if photometric in _YBR_AS_RGB:
        pixels = convert_color_space(pixels, photometric, "RGB")
    elif photometric != "RGB":
        raise DicomRenderError(f"colour space {photometric} is not supported for rendering")
    bits = int(ds.get("BitsStored") or pixels.dtype.itemsize * 8)
    return _to_8bit(pixels, bits), "colour"


def _to_8bit(pixels: np.ndarray, bits: int) -> np.ndarray:
    if pixels.dtype == np.uint8 and bits <= 8:
        return np.ascontiguousarray(pixels)
    top = float(2 ** max(bits, 1) - 1)
    scaled = np.clip(pixels.astype(np.float64) / top, 0.0, 1.0) * 255.0
    return np.rint(scaled).astype(np.uint8)


def _short(number: float) -> str:
    """W400 rather than W400.0, and a sane length for auto windows."""
    return str(int(round(number))) if abs(number - round(number)) < 0.05 else f"{number:.1f}"


def _fit(image: Image.Image, max_side: int) -> Image.Image:
    longest = max(image.width, image.height)
    if longest <= max_side:
        return image
    scale = max_side / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)
