"""Render one viewer's copy of an image: decode safely, optionally thumbnail, mark, encode.

There is deliberately no path that returns the input bytes: if anything fails the caller gets
:class:`~carematrix.watermark.model.MediaRejected` (or the exception), never an unmarked copy.
"""

from __future__ import annotations

from functools import partial

from carematrix.watermark import thumbnail as thumbs
from carematrix.watermark.compose import apply_marks
from carematrix.watermark.decode import open_image
from carematrix.watermark.encode import encode
from carematrix.watermark.hidden import FULL, grid_shape, pattern_signs
from carematrix.watermark.model import Rendered, Viewer
from carematrix.watermark.visible import mark_text

# Full-size output keeps its family; GIF (animation, 256 colours) becomes its first frame in PNG.
_FULL_FORMAT = {"jpeg": "jpeg", "png": "png", "webp": "webp", "gif": "png"}


def render_for_viewer(
    original: bytes,
    viewer: Viewer,
    mark_key: bytes,
    mark_id: str,
    *,
    thumbnail: tuple[int, int, str] | None = None,
    max_pixels: int = 50_000_000,
) -> Rendered:
    """The copy of ``original`` that ``viewer`` may see, visibly and invisibly marked.

    ``mark_id`` selects the hidden pattern; the caller keeps the mapping from it to
    (media, viewer, minute) so :func:`trace` can name who leaked a copy.
    """
    if not mark_key:
        raise ValueError("mark_key must be a non-empty secret")
    request = thumbs.check_request(thumbnail) if thumbnail is not None else None
    hint = None
    if request is not None:
        hint = partial(thumbs.decode_hint, box=request[:2], method=request[2])
    decoded = open_image(original, max_pixels, draft_for=hint)
    image, region = decoded.image, FULL
    if request is not None:
        image, region = thumbs.make(image, request[:2], request[2])
        out_fmt = "jpeg" if decoded.fmt == "jpeg" else "png"
    else:
        out_fmt = _FULL_FORMAT[decoded.fmt]
    signs = pattern_signs(mark_key, mark_id, grid_shape(*decoded.size))
    marked = apply_marks(image, signs, region, mark_text(viewer))
    return encode(marked, out_fmt, decoded.icc_profile, decoded.lossless)
