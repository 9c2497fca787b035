"""Encode the marked image. Nothing from the upload's metadata is carried over (EXIF with GPS
and device serials, XMP, comments) except the ICC profile, which only says how to show the
colours and whose loss would visibly shift them on wide-gamut phone photos."""

from __future__ import annotations

import io

from PIL import Image

from carematrix.watermark.model import Rendered

JPEG_QUALITY = 90
WEBP_QUALITY = 90
# zlib level 3 is several times faster than the default 6 for a few percent more bytes.
PNG_COMPRESS_LEVEL = 3

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def _fitting_icc(icc: bytes | None, mode: str) -> bytes | None:
    """The profile only if it describes the colour space we write (a CMYK source's profile on
    its RGB conversion would make colour-managed viewers show nonsense)."""
    if not icc or len(icc) < 20:
        return None
    want = b"GRAY" if mode in ("L", "LA") else b"RGB "
    return icc if icc[16:20] == want else None


def encode(image: Image.Image, fmt: str, icc_profile: bytes | None, lossless: bool) -> Rendered:
    image.info = {}  # Pillow's PNG/WebP writers otherwise copy some of this through
    icc = _fitting_icc(icc_profile, image.mode)
    extra: dict[str, object] = {"icc_profile": icc} if icc else {}
    buf = io.BytesIO()
    if fmt == "jpeg":
        if image.mode not in ("L", "RGB", "YCbCr"):
            image = image.convert("RGB")
        # Baseline, not optimised: both options cost more time than they save bytes here.
        image.save(buf, "JPEG", quality=JPEG_QUALITY, **extra)
    elif fmt == "png":
        image.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL, **extra)
    elif fmt == "webp":
        if lossless:
            image.save(buf, "WEBP", lossless=True, quality=50, method=2, **extra)
        else:
            image.save(buf, "WEBP", quality=WEBP_QUALITY, method=3, **extra)
    else:
        raise ValueError(f"cannot encode {fmt}")
    return Rendered(data=buf.getvalue(), content_type=CONTENT_TYPES[fmt])
