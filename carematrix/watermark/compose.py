"""Put both marks on a decoded image, touching only the bands that carry brightness: the Y
band for JPEG (no RGB round trip at all), the image itself for L and RGB."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageChops

from carematrix.watermark.hidden import Region, add_layer, pattern_layer
from carematrix.watermark.visible import build_tile, coverage, font_size_for, paste_text


def _mark(image: Image.Image, signs: np.ndarray, region: Region, text: str) -> Image.Image:
    out = add_layer(image, pattern_layer(signs, image.size, region))
    paste_text(out, build_tile(text, font_size_for(image.size)))
    return out


def _with_luma(image: Image.Image, luma: Image.Image) -> Image.Image:
    """``image`` with its Y band replaced. Pillow's own band write (what ``putalpha`` uses) is
    ten times cheaper on 12 MP than ``Image.merge``, which re-interleaves all three bands."""
    core = getattr(image.im, "putband", None)
    if core is None or image.readonly:
        _, cb, cr = image.split()
        return Image.merge("YCbCr", (luma, cb, cr))
    core(luma.im, 0)
    return image


def apply_marks(image: Image.Image, signs: np.ndarray, region: Region, text: str) -> Image.Image:
    """The image with the hidden pattern added and the text drawn over it. A ``YCbCr`` input
    is modified in place (it is always a private decode); other modes give a new image.

    The hidden pattern goes in first so the text, which differs per viewer anyway, sits on top
    of it rather than being dimmed by it.
    """
    if image.mode == "YCbCr":
        return _with_luma(image, _mark(image.getchannel(0), signs, region, text))
    if image.mode == "RGBA":
        alpha = image.getchannel("A")
        out = _mark(image.convert("RGB"), signs, region, text)
        tile = build_tile(text, font_size_for(image.size))
        out.putalpha(ImageChops.lighter(alpha, coverage(image.size, tile)))
        return out
    return _mark(image, signs, region, text)
