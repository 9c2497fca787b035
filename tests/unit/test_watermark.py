"""Per-viewer image watermarks: what a user (or an investigator) would check.

All images are generated here: smooth lighting, hard-edged shapes and sensor-like noise make a
passable stand-in for a photo, and a page of text for a scanned document.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageDraw, ImageFilter, ImageFont

from carematrix.watermark import (
    MediaRejected,
    Rendered,
    TraceResult,
    Viewer,
    fonts,
    render_for_viewer,
    similarity,
    sniff_image,
    trace,
)
from carematrix.watermark.fonts import find_cjk_font, load_font, renderable
from carematrix.watermark.hidden import grid_shape, pattern_signs
from carematrix.watermark.visible import mark_text

KEY = b"test-mark-key-0123456789abcdefgh"
MINUTE = datetime(2026, 11, 25, 21, 4, tzinfo=UTC)
VIEWERS = [
    Viewer(
        f"Doctor {i}", f"D10{i:02d}", f"@d10{i:02d}:renhe.example", MINUTE + timedelta(minutes=i)
    )
    for i in range(8)
]
MARK_IDS = [f"media-abc/viewer-{i}/minute-{i}" for i in range(8)]
LEAKER = 3


# ---------------------------------------------------------------- synthetic images


def photo(width: int, height: int, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    light = Image.fromarray(rng.integers(30, 225, (5, 7, 3), dtype=np.uint8), "RGB")
    im = light.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(40):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(min(width, height) // 40, min(width, height) // 6))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x - r, y - r * 2 // 3, x + r, y + r * 2 // 3), fill=fill)
    im = im.filter(ImageFilter.GaussianBlur(1.5))
    noise = rng.normal(0, 5, (height, width, 1)).astype(np.int16)
    return Image.fromarray(np.clip(np.asarray(im, np.int16) + noise, 0, 255).astype(np.uint8))


def document(width: int = 1240, height: int = 1754, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=22)
    for y in range(80, height - 100, 34):
        words = rng.integers(97, 123, 60).astype(np.uint8).tobytes().decode()
        draw.text((90, y), " ".join(words[i : i + 6] for i in range(0, 60, 6)), "black", font)
    return page


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg(im: Image.Image, quality: int = 92, **kw: object) -> bytes:
    return encode(im.convert("RGB"), "JPEG", quality=quality, **kw)


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def leak(data: bytes, *, scale: float = 1.0, crop: float = 1.0, quality: int = 70) -> bytes:
    """What a leaker does: maybe crop (centred), maybe shrink, re-save as JPEG."""
    im = decode(data).convert("RGB")
    if crop < 1.0:
        w, h = im.size
        cw, ch = round(w * crop), round(h * crop)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        im = im.crop((x0, y0, x0 + cw, y0 + ch))
    if scale != 1.0:
        size = (round(im.width * scale), round(im.height * scale))
        im = im.resize(size, Image.Resampling.LANCZOS)
    return jpeg(im, quality)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header claims (width, height) 8-bit grey, with whatever pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def zero_rows(width: int, height: int) -> bytes:
    """zlib stream of an all-black 8-bit image: a few kB that inflate to width*height bytes."""
    comp = zlib.compressobj(9)
    row_block = b"\x00" * ((width + 1) * 256)
    out = [comp.compress(row_block) for _ in range(height // 256)]
    out.append(comp.compress(b"\x00" * ((width + 1) * (height % 256))))
    out.append(comp.flush())
    return b"".join(out)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def original() -> bytes:
    return jpeg(photo(1600, 1200, seed=3))


@pytest.fixture(scope="module")
def marked(original: bytes) -> bytes:
    return render_for_viewer(original, VIEWERS[LEAKER], KEY, MARK_IDS[LEAKER]).data


def assert_traced_to_leaker(result: TraceResult) -> None:
    others = [s for c, s in result.scores.items() if c != MARK_IDS[LEAKER]]
    assert result.aligned
    assert result.confident and result.best == MARK_IDS[LEAKER], result.scores
    assert result.scores[MARK_IDS[LEAKER]] > max(others) + 5


# ---------------------------------------------------------------- rendering


def test_sniff_image_goes_by_magic_bytes_only() -> None:
    im = photo(40, 30)
    assert sniff_image(jpeg(im)) == "jpeg"
    assert sniff_image(encode(im, "PNG")) == "png"
    assert sniff_image(encode(im, "WEBP")) == "webp"
    assert sniff_image(encode(im, "GIF")) == "gif"
    assert sniff_image(b"%PDF-1.7\n") is None
    assert sniff_image(b"") is None


def test_each_viewer_gets_their_own_copy_of_a_jpeg(original: bytes, marked: bytes) -> None:
    other = render_for_viewer(original, VIEWERS[5], KEY, MARK_IDS[5])
    assert isinstance(other, Rendered) and other.content_type == "image/jpeg"
    assert other.data != marked and marked != original
    for data in (marked, other.data):
        im = decode(data)
        assert im.format == "JPEG" and im.size == (1600, 1200)
    # Same viewer, same mark id: byte-identical (caching by (media, viewer, minute) is safe).
    assert render_for_viewer(original, VIEWERS[LEAKER], KEY, MARK_IDS[LEAKER]).data == marked


def test_marks_leave_the_picture_usable(original: bytes, marked: bytes) -> None:
    before = np.asarray(decode(original).convert("L"), np.int16)
    after = np.asarray(decode(marked).convert("L"), np.int16)
    diff = np.abs(after - before)
    # Most pixels only carry the hidden mark: a few grey levels at most.
    assert np.median(diff) <= 4
    # The visible text is really there: a clear share of pixels changed markedly.
    assert (diff > 20).mean() > 0.03


def test_metadata_is_stripped_and_orientation_applied() -> None:
    # Stored landscape with a red block top-left; EXIF says "rotate 90 clockwise to view".
    stored = photo(400, 300, seed=4)
    ImageDraw.Draw(stored).rectangle((0, 0, 80, 80), fill=(255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "SecretCam"
    exif[0x8825] = {1: "N", 2: (31.0, 14.0, 5.0), 3: "E", 4: (121.0, 28.0, 1.0)}
    data = jpeg(stored, exif=exif.tobytes(), comment=b"patient MRN-0042")
    out = render_for_viewer(data, VIEWERS[0], KEY, "m").data
    im = decode(out)
    assert im.size == (300, 400)  # upright
    assert "exif" not in im.info and not im.getexif()
    assert b"SecretCam" not in out and b"MRN-0042" not in out and b"Exif" not in out
    red = np.asarray(im.convert("RGB"))[10:60, -60:-10].mean(axis=(0, 1))
    assert red[0] > 150 and red[1] < 110  # the block is now top-right, as a viewer sees it


def test_colour_profile_survives_but_only_if_it_fits() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    im = photo(320, 240, seed=9)
    out = render_for_viewer(jpeg(im, icc_profile=srgb), VIEWERS[0], KEY, "c").data
    assert decode(out).info.get("icc_profile") == srgb
    grey_src = encode(im.convert("L"), "JPEG", icc_profile=srgb)
    grey = render_for_viewer(grey_src, VIEWERS[0], KEY, "c").data
    assert decode(grey).info.get("icc_profile") is None  # an RGB profile on grey pixels


def test_png_webp_and_gif_keep_their_family() -> None:
    im = photo(480, 360, seed=5)
    rgba = im.convert("RGBA")
    rgba.putalpha(Image.new("L", im.size, 255))
    for src, fmt, want_type, want_format in (
        (encode(rgba, "PNG"), "png", "image/png", "PNG"),
        (encode(im, "WEBP", quality=90), "webp", "image/webp", "WEBP"),
        (encode(im, "WEBP", lossless=True), "webp", "image/webp", "WEBP"),
    ):
        assert sniff_image(src) == fmt
        a = render_for_viewer(src, VIEWERS[0], KEY, "a")
        b = render_for_viewer(src, VIEWERS[1], KEY, "b")
        assert a.content_type == want_type and a.data != b.data and a.data != src
        out = decode(a.data)
        assert out.format == want_format and out.size == im.size
    assert decode(render_for_viewer(encode(rgba, "PNG"), VIEWERS[0], KEY, "a").data).mode == "RGBA"


def _odd_sources() -> dict[str, bytes]:
    im = photo(160, 120, seed=8)
    grey16 = Image.fromarray((np.asarray(im.convert("L"), np.uint16) * 200).astype(np.uint16))
    palette = im.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    return {
        "grey-jpeg": jpeg(im.convert("L")),
        "cmyk-jpeg": encode(im.convert("CMYK"), "JPEG"),
        "palette-png-transparent": encode(palette, "PNG", transparency=0),
        "16-bit-png": encode(grey16, "PNG"),
        "grey-alpha-png": encode(im.convert("LA"), "PNG"),
        "1-bit-png": encode(im.convert("1"), "PNG"),
    }


@pytest.mark.parametrize("name", sorted(_odd_sources()))
def test_unusual_pixel_formats_are_marked_too(name: str) -> None:
    src = _odd_sources()[name]
    a = render_for_viewer(src, VIEWERS[0], KEY, "a")
    b = render_for_viewer(src, VIEWERS[1], KEY, "b")
    assert a.data != b.data and a.data != src
    assert decode(a.data).size == (160, 120)
    assert a.content_type == ("image/jpeg" if name.endswith("jpeg") else "image/png")


def test_gif_becomes_its_first_frame_as_png() -> None:
    first = Image.new("RGB", (200, 150), (200, 30, 30))
    second = Image.new("RGB", (200, 150), (30, 30, 200))
    src = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    out = render_for_viewer(src, VIEWERS[0], KEY, "g")
    assert out.content_type == "image/png"
    im = decode(out.data)
    assert im.format == "PNG" and im.size == (200, 150)
    r, _, b = np.median(np.asarray(im.convert("RGB")), axis=(0, 1))
    assert r > 150 and b < 80


def test_a_chinese_name_is_drawn() -> None:
    viewer = Viewer("张伟", "D1001", "@d1001:renhe.example", MINUTE)
    text = mark_text(viewer)
    assert text.splitlines() == ["张伟  D1001", "@d1001:renhe.example", "2026-11-25 21:04 UTC"]
    src = jpeg(photo(640, 480, seed=6))
    zhang = render_for_viewer(src, viewer, KEY, "z").data
    li = render_for_viewer(src, Viewer("李娜", "D1001", viewer.user_id, MINUTE), KEY, "z").data
    assert zhang != li  # the name itself reaches the pixels
    font = load_font(24)
    if find_cjk_font():
        assert renderable("张伟", font) == "张伟"
    else:  # no CJK font on this machine: spelled out rather than drawn as boxes
        assert renderable("张伟", font) == "U+5F20 U+4F1F"


@pytest.fixture
def fresh_font_lookup() -> Iterator[None]:
    caches = (fonts.cjk_font_files, fonts.find_latin_font, fonts.load_font)
    for cached in caches:
        cached.cache_clear()
    yield
    for cached in caches:
        cached.cache_clear()


def test_font_lookup_honours_an_explicit_font(
    fresh_font_lookup: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    chosen = tmp_path / "HospitalCJK.otf"
    chosen.write_bytes(b"not really a font")
    monkeypatch.setenv(fonts.ENV_VAR, str(chosen))
    assert fonts.find_cjk_font() == str(chosen)
    assert fonts.load_font(20).getbbox("D1001")[2] > 20  # unusable file: next choice used


def test_font_lookup_falls_back_to_pillows_scalable_font(
    fresh_font_lookup: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(fonts.ENV_VAR, raising=False)
    monkeypatch.setattr(fonts, "_run_fc", lambda *args: [])
    monkeypatch.setattr(fonts, "_FONT_DIRS", (str(tmp_path),))
    assert fonts.find_cjk_font() is None and fonts.find_latin_font() is None
    small, large = fonts.load_font(12), fonts.load_font(120)
    assert large.getbbox("D1001")[2] > 5 * small.getbbox("D1001")[2]
    assert fonts.renderable("张伟 D1001", large) == "U+5F20 U+4F1F D1001"


def test_minute_is_printed_in_the_viewers_own_zone() -> None:
    beijing = timezone(timedelta(hours=8))
    viewer = Viewer("Li", "N7", "@n7:renhe.example", datetime(2026, 11, 26, 5, 4, tzinfo=beijing))
    assert mark_text(viewer).splitlines()[-1] == "2026-11-26 05:04 UTC+08:00"


@pytest.mark.parametrize(("box", "method"), [((320, 240), "scale"), ((96, 96), "crop")])
def test_thumbnails_fill_the_box_and_are_marked_per_viewer(
    original: bytes, box: tuple[int, int], method: str
) -> None:
    a = render_for_viewer(original, VIEWERS[0], KEY, "a", thumbnail=(*box, method))
    b = render_for_viewer(original, VIEWERS[1], KEY, "b", thumbnail=(*box, method))
    assert a.content_type == "image/jpeg" and a.data != b.data
    assert decode(a.data).size == box  # 4:3 source fits 320x240 exactly; crop is exact
    # Made from the original, then marked: it differs from a plain thumbnail.
    plain = decode(original).convert("RGB")
    plain = plain.resize(box) if method == "scale" else plain.crop((200, 0, 1400, 1200)).resize(box)
    diff = np.abs(
        np.asarray(decode(a.data).convert("L"), np.int16) - np.asarray(plain.convert("L"))
    )
    assert (diff > 20).mean() > 0.03


def test_thumbnail_of_a_png_is_png_and_never_enlarged_by_scale() -> None:
    src = encode(photo(200, 100, seed=7), "PNG")
    out = render_for_viewer(src, VIEWERS[0], KEY, "t", thumbnail=(640, 480, "scale"))
    assert out.content_type == "image/png" and decode(out.data).size == (200, 100)
    out = render_for_viewer(src, VIEWERS[0], KEY, "t", thumbnail=(50, 50, "crop"))
    assert decode(out.data).size == (50, 50)


def test_bad_requests_are_caller_errors(original: bytes) -> None:
    with pytest.raises(ValueError):
        render_for_viewer(original, VIEWERS[0], b"", "m")
    for bad in ((0, 10, "scale"), (10, 10, "stretch"), (10**6, 10, "crop")):
        with pytest.raises(ValueError):
            render_for_viewer(original, VIEWERS[0], KEY, "m", thumbnail=bad)


# ---------------------------------------------------------------- rejection


REJECTS = {
    "empty": (lambda: b"", "unsupported"),
    "text": (lambda: b"Patient list\nMRN-0042 Zhang Wei\n", "unsupported"),
    "pdf": (lambda: b"%PDF-1.7\n" + b"x" * 500, "unsupported"),
    "jpeg-garbage": (lambda: b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "corrupt"),
    "png-garbage": (lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "corrupt"),
    "gif-garbage": (lambda: b"GIF89a" + b"\xff" * 40, "corrupt"),
    "png-header-bomb": (lambda: png_claiming(100_000, 100_000), "too_large"),
    # ~60 kB that would inflate to 64 MB of pixels.
    "png-zlib-bomb": (lambda: png_claiming(8000, 8000, zero_rows(8000, 8000)), "too_large"),
    "absurd-aspect": (lambda: png_claiming(30_000, 10, zero_rows(30_000, 10)), "bad_dimensions"),
}


@pytest.mark.parametrize("case", sorted(REJECTS))
def test_unservable_input_is_rejected_with_a_reason(case: str) -> None:
    make, code = REJECTS[case]
    with pytest.raises(MediaRejected) as err:
        render_for_viewer(make(), VIEWERS[0], KEY, "m")
    assert err.value.code == code
    assert err.value.reason and err.value.reason.endswith(".")


@pytest.mark.parametrize("tolerant", [False, True])
def test_truncated_jpeg_is_corrupt_not_half_served(original: bytes, tolerant: bool, monkeypatch) -> None:
    # Synapse switches Pillow to tolerate truncated files process-wide; the gate must not.
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", tolerant)
    with pytest.raises(MediaRejected) as err:
        render_for_viewer(original[: len(original) // 2], VIEWERS[0], KEY, "m")
    assert err.value.code == "corrupt"


def test_pixel_budget_is_enforced_from_the_header(original: bytes) -> None:
    with pytest.raises(MediaRejected) as err:
        render_for_viewer(original, VIEWERS[0], KEY, "m", max_pixels=1_000_000)
    assert err.value.code == "too_large"
    # The header alone decides: broken pixel data behind a too-big header is "too_large",
    # proving nothing was decoded.
    with pytest.raises(MediaRejected) as err:
        render_for_viewer(png_claiming(2000, 2000, b"junk"), VIEWERS[0], KEY, "m", max_pixels=10**6)
    assert err.value.code == "too_large"


# ---------------------------------------------------------------- hidden mark and trace


def test_hidden_pattern_is_keyed_and_deterministic() -> None:
    shape = grid_shape(1600, 1200)
    assert shape == (40, 30)
    a = pattern_signs(KEY, "m1", shape)
    assert a.shape == (30, 40) and set(np.unique(a)) == {-1, 1}
    assert np.array_equal(a, pattern_signs(KEY, "m1", shape))
    assert abs(float((a * pattern_signs(KEY, "m2", shape)).mean())) < 0.15
    assert abs(float((a * pattern_signs(b"another key", "m1", shape)).mean())) < 0.15


def test_trace_after_jpeg_q70_and_half_size(original: bytes, marked: bytes) -> None:
    result = trace(leak(marked, scale=0.5, quality=70), original, KEY, MARK_IDS)
    assert_traced_to_leaker(result)


def test_trace_after_centre_crop_to_70_percent(original: bytes, marked: bytes) -> None:
    result = trace(leak(marked, crop=0.7, quality=70), original, KEY, MARK_IDS)
    assert_traced_to_leaker(result)


def test_trace_after_off_centre_crop_and_quarter_size(original: bytes, marked: bytes) -> None:
    im = decode(marked).convert("RGB").crop((37, 301, 1237, 1200))  # 75% x 75%, bottom-left
    result = trace(
        jpeg(im.resize((300, 225), Image.Resampling.BILINEAR), 75), original, KEY, MARK_IDS
    )
    assert_traced_to_leaker(result)


def test_trace_a_leaked_thumbnail(original: bytes) -> None:
    thumb = render_for_viewer(
        original, VIEWERS[LEAKER], KEY, MARK_IDS[LEAKER], thumbnail=(320, 240, "scale")
    ).data
    assert_traced_to_leaker(trace(thumb, original, KEY, MARK_IDS))


def test_trace_a_marked_document_scan() -> None:
    page = encode(document(), "PNG")
    out = render_for_viewer(page, VIEWERS[LEAKER], KEY, MARK_IDS[LEAKER]).data
    assert_traced_to_leaker(trace(leak(out, scale=0.5, quality=70), page, KEY, MARK_IDS))


def test_trace_names_nobody_for_unmarked_or_foreign_copies(original: bytes) -> None:
    unmarked = trace(leak(original, scale=0.5), original, KEY, MARK_IDS)
    stranger = render_for_viewer(original, VIEWERS[LEAKER], KEY, "not-a-candidate").data
    foreign = trace(leak(stranger, scale=0.5), original, KEY, MARK_IDS)
    wrong_key = trace(
        leak(render_for_viewer(original, VIEWERS[3], b"other key", MARK_IDS[3]).data),
        original,
        KEY,
        MARK_IDS,
    )
    for result in (unmarked, foreign, wrong_key):
        assert result.aligned
        assert result.best is None and not result.confident, result.scores
        assert set(result.scores) == set(MARK_IDS)
        assert max(result.scores.values()) < 5


def test_trace_does_not_accuse_anyone_for_an_unrelated_image(original: bytes) -> None:
    result = trace(jpeg(photo(800, 600, seed=11)), original, KEY, MARK_IDS)
    assert result.best is None and not result.confident


# ---------------------------------------------------------------- similarity


def test_similarity_finds_the_original_a_leak_came_from(original: bytes, marked: bytes) -> None:
    unrelated = [jpeg(photo(1600, 1200, seed=s)) for s in (21, 22)] + [
        jpeg(document().resize((1200, 1700)))
    ]
    for copy in (leak(marked, scale=0.5), leak(marked, crop=0.7, scale=0.6), leak(original)):
        own = similarity(copy, original)
        assert own > 0.9
        for other in unrelated:
            assert similarity(copy, other) < own - 0.3
