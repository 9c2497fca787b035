"""Open untrusted image bytes safely: size checks happen on the header, before any pixel is
decoded, so a tiny file claiming a gigapixel canvas costs nothing."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from carematrix.image_depth import is_deep, to_8bit
from carematrix.watermark.model import MediaRejected
from carematrix.watermark.sniff import sniff_image, webp_is_lossless

#: No real photo or scan is this long on one side; such headers are crafted or broken.
MAX_SIDE = 32_768
#: Long chat screenshots reach ~20:1; far beyond that the "image" is a line of pixels.
MAX_ASPECT = 50

_PIL_FORMATS = {"jpeg": ["JPEG"], "png": ["PNG"], "webp": ["WEBP"], "gif": ["GIF"]}
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Everything Pillow's parsers raise on hostile or damaged input.
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    ZeroDivisionError,
)

CORRUPT = "The image file is damaged or incomplete."
UNSUPPORTED = "Only JPEG, PNG, WebP and GIF images can be shown."
TOO_LARGE = "The image has too many pixels to be processed safely."
BAD_DIMENSIONS = "The image has implausible dimensions."


@dataclass
class Decoded:
    """A loaded image in one of the modes the marker handles (``L``, ``RGB``, ``RGBA`` or, for
    JPEG, ``YCbCr`` so no colour conversion is spent on the way in or out)."""

    image: Image.Image
    fmt: str
    #: Size of the full-resolution image after orientation, even when decoded reduced: the
    #: hidden pattern is laid out relative to this.
    size: tuple[int, int]
    icc_profile: bytes | None
    lossless: bool


def _reject_bad_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise MediaRejected("corrupt", CORRUPT)
    if width * height > max_pixels:
        raise MediaRejected("too_large", TOO_LARGE)
    if (
        width > MAX_SIDE
        or height > MAX_SIDE
        or max(width, height) > MAX_ASPECT * min(width, height)
    ):
        raise MediaRejected("bad_dimensions", BAD_DIMENSIONS)


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)
    except _DECODE_ERRORS:
        return 1  # a broken EXIF block must not make the picture unviewable
    return value if isinstance(value, int) and value in _ORIENT else 1


def _normalise_mode(im: Image.Image, gray: bool) -> Image.Image:
    mode = im.mode
    if is_deep(im):
        im = to_8bit(im)
    elif mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    elif mode not in ("L", "RGB", "RGBA", "YCbCr"):
        im = im.convert("RGB")  # 1, CMYK, RGBX, LAB, HSV
    if gray and im.mode != "L":
        im = im.convert("L")
    return im


def _complete(data: bytes, fmt: str) -> bool:
    """Is the file whole? Synapse sets Pillow's process-wide ``LOAD_TRUNCATED_IMAGES``, under
    which a cut-off file decodes with grey filler instead of failing; a half-delivered scan
    must be refused, so completeness is checked on the bytes, independent of that flag."""
    if fmt == "jpeg":
        # 0xFF in entropy-coded data is always stuffed, so an end-of-image marker after the
        # last start-of-scan means the last scan ended.
        last_scan = data.rfind(b"\xff\xda")
        return last_scan >= 0 and data.find(b"\xff\xd9", last_scan) >= 0
    if fmt == "png":
        return data.rfind(b"IEND") > 8
    if fmt == "webp":
        return len(data) >= 12 and int.from_bytes(data[4:8], "little") + 8 <= len(data)
    return True  # GIF: only the first frame is used, and its decoder fails on a cut frame


def open_image(
    data: bytes,
    max_pixels: int,
    *,
    draft_for: Callable[[tuple[int, int]], tuple[int, int]] | None = None,
    gray: bool = False,
) -> Decoded:
    """Decode ``data`` or raise :class:`MediaRejected`.

    ``draft_for`` maps the oriented full size to the smallest (width, height) the caller needs;
    JPEG then decodes at a reduced DCT scale that is still at least that big, which is most of
    the cost saving for thumbnails and tracing. Without it the full resolution is kept.
    """
    fmt = sniff_image(data)
    if fmt is None:
        raise MediaRejected("unsupported", UNSUPPORTED)
    if not _complete(data, fmt):
        raise MediaRejected("corrupt", CORRUPT)
    try:
        opened = Image.open(io.BytesIO(data), formats=_PIL_FORMATS[fmt])
    except Image.DecompressionBombError as exc:
        raise MediaRejected("too_large", TOO_LARGE) from exc
    except _DECODE_ERRORS as exc:
        raise MediaRejected("corrupt", CORRUPT) from exc
    try:
        width, height = opened.size
        _reject_bad_size(width, height, max_pixels)
        orientation = _orientation(opened)
        swap = orientation >= 5
        full = (height, width) if swap else (width, height)
        if fmt == "jpeg" and opened.mode in ("RGB", "L"):
            want = draft_for(full) if draft_for is not None else full
            want = (want[1], want[0]) if swap else want
            # Adobe "transform 0" files store RGB; libjpeg cannot hand those out as YCbCr.
            stored_ycc = opened.info.get("adobe_transform", 1) != 0
            mode = "L" if gray else ("YCbCr" if opened.mode == "RGB" and stored_ycc else None)
            opened.draft(mode, (max(1, want[0]), max(1, want[1])))
        icc = opened.info.get("icc_profile") or None
        opened.load()
        im = _normalise_mode(opened, gray)
        if orientation in _ORIENT:
            im = im.transpose(_ORIENT[orientation])
    except MediaRejected:
        raise
    except (Image.DecompressionBombError, MemoryError) as exc:
        raise MediaRejected("too_large", TOO_LARGE) from exc
    except _DECODE_ERRORS as exc:
        raise MediaRejected("corrupt", CORRUPT) from exc
    lossless = fmt == "webp" and webp_is_lossless(data)
    return Decoded(image=im, fmt=fmt, size=full, icc_profile=icc, lossless=lossless)
