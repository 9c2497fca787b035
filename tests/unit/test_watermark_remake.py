"""The copy a viewer received, made again in grey for no-forward's comparison: it must be the
picture the media gate served them (to within that file's JPEG encoding), at the size of the
grey original the check decoded, whatever the file's format, size and orientation."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image

from carematrix.protect import perceptual as P
from carematrix.watermark import Viewer, render_for_viewer
from carematrix.watermark.remake import received_grey, upright_size
from tests import image_corpus as corpus

KEY = b"remake-test-key-0123456789abcdef"
MARK = "media-x/viewer-y/minute-z"
NURSE = Viewer("赵敏 Zhao Min", "N2041", "@n2041:renhe.example", datetime(2026, 3, 29, 1, 59, tzinfo=UTC))
FILM = corpus.chest_film(104, template=4)


def _rotated_jpeg(im: Image.Image) -> bytes:
    """A camera's JPEG: stored on its side, with EXIF orientation 6 to show it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    im.rotate(90, expand=True).convert("RGB").save(out, "JPEG", quality=92, exif=exif.tobytes())
    return out.getvalue()


FILES = {
    "JPEG": corpus.jpeg(FILM, 92),
    "PNG": corpus.encode(FILM),
    "JPEG on its side (EXIF)": _rotated_jpeg(FILM),
    # decoded at a quarter of its size by the check: the marks are laid at that size
    "JPEG of 3200 px": corpus.jpeg(FILM.resize((FILM.width * 5, FILM.height * 5)), 92),
    "PNG of 1500 px": corpus.encode(FILM.resize((1500, 1100))),
}


@pytest.mark.parametrize("name", list(FILES))
def test_the_remade_copy_is_the_one_the_viewer_was_served(name: str) -> None:
    data = FILES[name]
    original = P.original_grey(data)
    served = P.original_grey(render_for_viewer(data, NURSE, KEY, MARK).data).astype(np.float64)
    remade = received_grey(original, upright_size(data), NURSE, KEY, MARK)
    assert remade.shape == original.shape == served.shape
    error = np.abs(remade.astype(np.float64) - served)
    marks = np.abs(original.astype(np.float64) - served)
    # the marks move pixels by about four grey levels on average, a tenth of them (the
    # letters) by more than ten; what is left is the served file's own JPEG encoding: under
    # one level on average, and hardly a pixel off by ten (a letter misplaced by one pixel
    # would leave a third of the letters' pixels off)
    assert marks.mean() > 3 and (marks > 10).mean() > 0.08
    assert error.mean() < 1.0, f"{name}: {error.mean():.2f} against marks of {marks.mean():.2f}"
    assert (error > 10).mean() < 0.01 * (marks > 10).mean()


def test_another_viewer_or_minute_gives_another_copy() -> None:
    data = FILES["PNG"]
    original = P.original_grey(data)
    mine = received_grey(original, upright_size(data), NURSE, KEY, MARK).astype(np.float64)
    doctor = Viewer("欧阳明远 Ouyang Mingyuan", "D3107", "@d3107:renhe.example", NURSE.minute)
    theirs = received_grey(original, upright_size(data), doctor, KEY, "media-x/viewer-d/minute-z").astype(np.float64)
    assert np.abs(mine - theirs).mean() > 1  # other letters in other places
    later = Viewer(NURSE.name, NURSE.staff_number, NURSE.user_id, datetime(2026, 3, 29, 3, 0, tzinfo=UTC))
    stamp = received_grey(original, upright_size(data), later, KEY, MARK).astype(np.float64)
    assert (np.abs(mine - stamp) > 10).mean() > 0.002  # only the minute's digits differ


def test_upright_size_follows_the_orientation() -> None:
    assert upright_size(FILES["JPEG on its side (EXIF)"]) == FILM.size
    assert upright_size(FILES["PNG"]) == FILM.size
