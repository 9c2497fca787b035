"""A deterministic corpus of clinical-looking images, and the ways people copy them.

Nothing may be downloaded when tests or benchmarks run, so every image is generated from a
seed (same seed, same pixels): textured photo-like scenes, scanned forms with text, ECG-like
line charts and chest-film-like radiographs. The hard cases for a perceptual match are built
in on purpose: forms of one hospital share their printed template and differ in the values
written into them, ECGs share the grid paper and lead layout, and :func:`chest_film` draws
every patient from one anatomy template whose proportions, position and findings vary, so a
*sibling* film (another patient, same template) is as close to a protected film as two real
patients' films are.

:data:`TRANSFORMS` are the copies no-forward must recognise: re-encoded as JPEG, resized,
cropped, converted to greyscale, pasted into a screenshot of a messaging window, and the
copy a ward member received (with their watermark) saved again.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

if TYPE_CHECKING:
    from carematrix.watermark import Viewer

_FONT_PATHS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
)
_WORDS = (
    "patient ward bed potassium sodium creatinine lactate haemoglobin platelets insulin glucose "
    "culture sputum urine chest review consultant registrar nurse referral discharge report "
    "result normal abnormal high low specimen collected received authorised department clinic "
    "history allergy diagnosis impression findings recommendation follow-up signature date"
).split()
_FORM_FIELDS = ("Name", "MRN", "DOB", "Ward", "Bed", "Specimen", "Collected", "Reported")
_TESTS = ("Na", "K", "Cl", "HCO3", "Urea", "Creat", "Gluc", "Hb", "WBC", "Plt", "CRP", "Lact")


@lru_cache(maxsize=32)
def _font(index: int, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype(_FONT_PATHS[index % len(_FONT_PATHS)], size)
    except OSError:
        return ImageFont.load_default(size=size)


def _noise_field(rng: np.random.Generator, w: int, h: int, octaves: int = 5) -> np.ndarray:
    """Smooth multi-octave value noise in [0, 1]: texture for skies, walls, skin and paper."""
    out = np.zeros((h, w), dtype=np.float32)
    weight = 1.0
    total = 0.0
    for octave in range(octaves):
        cells = 3 * 2**octave
        small = rng.random((max(2, cells * h // max(w, h)), max(2, cells * w // max(w, h))))
        layer = Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        out += weight * np.asarray(layer, dtype=np.float32) / 255
        total += weight
        weight *= 0.55
    return out / total


def _words(rng: np.random.Generator, n: int) -> str:
    return " ".join(str(rng.choice(_WORDS)) for _ in range(n))


# ---------------------------------------------------------------- the four kinds


def photo(seed: int) -> Image.Image:
    """A textured scene: sky, ground and a dozen textured objects, soft light, sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = (int(rng.integers(560, 900)), int(rng.integers(420, 680)))
    horizon = int(h * rng.uniform(0.3, 0.65))
    img = np.zeros((h, w, 3), dtype=np.float32)
    sky = rng.uniform(120, 230, 3)
    ground = rng.uniform(40, 170, 3)
    tex = _noise_field(rng, w, h)
    rows = np.arange(h, dtype=np.float32)[:, None, None]
    img[:] = np.where(rows < horizon, sky * (0.75 + 0.25 * rows / max(horizon, 1)), ground)
    img *= (0.7 + 0.6 * tex)[..., None]
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(8, 18))):
        cx, cy = int(rng.integers(0, w)), int(rng.integers(horizon // 2, h))
        rx, ry = int(rng.integers(w // 30, w // 6)), int(rng.integers(h // 30, h // 5))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=colour)
        else:
            points = [
                (cx + rx * math.cos(a) * rng.uniform(0.6, 1.2), cy + ry * math.sin(a) * rng.uniform(0.6, 1.2))
                for a in np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(3, 7))))
            ]
            draw.polygon(points, fill=colour)
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.4)))
    arr = np.asarray(im, dtype=np.float32)
    arr *= (0.8 + 0.4 * _noise_field(rng, w, h, 3))[..., None]  # light falling across the scene
    arr += rng.normal(0, 3.0, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def scan(seed: int, template: int | None = None) -> Image.Image:
    """A scanned lab report. Reports sharing ``template`` share the printed form (hospital
    header, field labels, table rules and test names) and differ in what was filled in."""
    form = np.random.default_rng(10_000_000 + (template if template is not None else seed))
    rng = np.random.default_rng(seed)
    w, h = 620, 820
    paper = 236 + 14 * _noise_field(rng, w, h, 3)
    im = Image.fromarray(paper.astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(im)
    ink = (20, 20, 30)
    font_index = int(form.integers(0, 3))
    title = _font(font_index, 22)
    label = _font(font_index, 14)
    draw.text((40, 30), f"{str(form.choice(_WORDS)).title()} General Hospital", font=title, fill=ink)
    draw.text((40, 62), "Clinical Laboratory Report", font=label, fill=ink)
    draw.line((40, 88, w - 40, 88), fill=ink, width=2)
    for i, field in enumerate(_FORM_FIELDS):
        x, y = 40 + (i % 2) * 280, 100 + (i // 2) * 24
        draw.text((x, y), f"{field}:", font=label, fill=ink)
        value = _words(rng, 2).title() if i in (0, 3, 5) else f"{int(rng.integers(10000, 999999))}"
        draw.text((x + 90, y), value, font=label, fill=(30, 30, 120))
    top = 210
    draw.rectangle((40, top, w - 40, top + 26 * len(_TESTS) + 30), outline=ink, width=1)
    tests = list(form.permutation(_TESTS))
    for i, test in enumerate(tests):
        y = top + 30 + i * 26
        draw.line((40, y - 4, w - 40, y - 4), fill=(120, 120, 120))
        draw.text((50, y), str(test), font=label, fill=ink)
        draw.text((200, y), f"{rng.uniform(0.5, 150):.1f}", font=label, fill=(30, 30, 120))
        draw.text((330, y), str(rng.choice(["", "H", "L", ""])), font=label, fill=(160, 20, 20))
        draw.text((400, y), f"{form.uniform(1, 10):.1f}-{form.uniform(10, 200):.0f}", font=label, fill=ink)
    y = top + 26 * len(_TESTS) + 50
    for _ in range(int(rng.integers(3, 7))):
        draw.text((40, y), _words(rng, int(rng.integers(5, 9))), font=label, fill=ink)
        y += 22
    sx = int(rng.integers(380, 480))
    points = [(sx + i * 6, y + 40 + 10 * math.sin(i * rng.uniform(0.5, 1.5))) for i in range(20)]
    draw.line(points, fill=(20, 20, 120), width=2)  # the signature
    im = im.rotate(float(rng.uniform(-1.2, 1.2)), resample=Image.Resampling.BICUBIC, fillcolor=(236, 236, 232))
    arr = np.asarray(im.filter(ImageFilter.GaussianBlur(0.5)), dtype=np.float32)
    arr += rng.normal(0, 4, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _beat(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One P-QRS-T complex over t in [0, 1): Gaussian bumps, a patient's own proportions."""
    waves = (
        (0.16, 0.025, rng.uniform(0.08, 0.2)),
        (0.28, 0.008, -rng.uniform(0.05, 0.2)),
        (0.30, 0.010, rng.uniform(0.8, 1.6)),
        (0.32, 0.010, -rng.uniform(0.1, 0.4)),
        (0.55, 0.045, rng.uniform(0.15, 0.45)),
    )
    out = np.zeros_like(t)
    for centre, width, amplitude in waves:
        out += amplitude * np.exp(-(((t - centre) / width) ** 2))
    return out


def ecg(seed: int) -> Image.Image:
    """A 12-lead ECG print-out: pink grid paper, four rows of traces with lead labels. Every
    ECG shares the paper and the layout; heart rate and each lead's morphology differ."""
    rng = np.random.default_rng(seed)
    w, h = 900, 560
    arr = np.full((h, w, 3), (252, 244, 244), dtype=np.uint8)
    arr[:, ::8] = (246, 200, 200)
    arr[::8, :] = (246, 200, 200)
    arr[:, ::40] = (236, 150, 150)
    arr[::40, :] = (236, 150, 150)
    im = Image.fromarray(arr)
    draw = ImageDraw.Draw(im)
    font = _font(0, 13)
    rate = rng.uniform(50, 120)
    leads = ("I", "aVR", "V1", "V4", "II", "aVL", "V2", "V5", "III", "aVF", "V3", "V6")
    for row in range(4):
        baseline = 70 + row * 130
        for col in range(4 if row < 3 else 1):
            x0, x1 = 10 + col * 222, (10 + (col + 1) * 222) if row < 3 else w - 10
            xs = np.arange(x0, x1)
            t = (xs / 200.0) * rate / 60 + rng.uniform(0, 1)
            shape = np.random.default_rng(seed * 31 + row * 4 + col)
            trace = _beat(t % 1.0, shape) * shape.choice([-1, 1], p=[0.2, 0.8])
            trace += 0.03 * np.sin(xs / 37.0 + rng.uniform(0, 6)) + rng.normal(0, 0.012, xs.size)
            ys = baseline - 55 * trace
            draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=(10, 10, 10), width=2)
            label = leads[row * 4 + col] if row < 3 else "II"
            draw.text((x0 + 4, baseline - 50), label, font=font, fill=(10, 10, 10))
    draw.text((12, h - 22), f"25 mm/s 10 mm/mV  HR {rate:.0f}  ID {int(rng.integers(100000, 999999))}",
              font=font, fill=(10, 10, 10))
    return im


def chest_film(patient: int, template: int | None = None) -> Image.Image:
    """A frontal chest radiograph. Every film of one ``template`` has the same anatomy model
    (lung fields, ribs, spine, heart, clavicles); each patient varies it (build, heart size,
    rib angle, position on the detector, exposure), adds their own findings (nodules,
    lines) and their own grain, marker and label."""
    model = np.random.default_rng(20_000_000 + (template if template is not None else patient))
    rng = np.random.default_rng(patient)
    w, h = 640, 720
    scale = rng.uniform(0.95, 1.05)
    shift_x, shift_y = rng.uniform(-12, 12), rng.uniform(-12, 12)
    cx, cy = w / 2 + shift_x, h / 2 + shift_y
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    body = np.exp(-(((xx - cx) / (w * 0.42 * scale)) ** 8) - (((yy - cy - 40) / (h * 0.6)) ** 8))
    img = 35 + 120 * body
    lung_w, lung_h = model.uniform(0.13, 0.16) * w * scale, model.uniform(0.26, 0.3) * h * scale
    lung_w *= rng.uniform(0.94, 1.06)
    lungs = np.zeros_like(xx)
    for side in (-1, 1):
        lx = cx + side * model.uniform(0.17, 0.2) * w * scale
        ly = cy - 10 * scale
        lungs += np.exp(-(((xx - lx) / lung_w) ** 4 + ((yy - ly) / lung_h) ** 4))
    img -= 85 * lungs
    img += 55 * np.exp(-(((xx - cx) / (w * 0.035)) ** 2)) * body  # the spine
    rib_gap = lung_h * model.uniform(0.2, 0.23) * rng.uniform(0.96, 1.04)
    sag = model.uniform(0.5, 0.8) * rng.uniform(0.9, 1.1)
    for i in range(9):  # ribs: arcs from the spine out and down across each lung field
        ry = cy - lung_h * 1.05 + i * rib_gap
        dx = np.abs(xx - cx) / (lung_w * 2.4)
        arc = ry + rib_gap * (1.8 * sag * dx - 0.9 * sag * dx**2) * 2.2
        img += 30 * np.exp(-(((yy - arc) / 5.0) ** 2)) * (dx < 1.0) * np.clip(lungs + 0.3, 0, 1)
    heart_r = model.uniform(0.13, 0.16) * w * rng.uniform(0.9, 1.12)
    heart = np.exp(-(((xx - cx - heart_r * 0.35) / heart_r) ** 2 + ((yy - cy - lung_h * 0.45) / (heart_r * 0.8)) ** 2))
    img += 70 * heart
    for side in (-1, 1):  # clavicles
        arc = cy - lung_h * 1.05 + 0.12 * np.abs(xx - cx) * rng.uniform(0.9, 1.1)
        img += 40 * np.exp(-(((yy - arc) / 7) ** 2)) * (np.abs(xx - cx) < w * 0.3) * ((xx - cx) * side > 0)
    for _ in range(int(rng.integers(1, 5))):  # this patient's findings
        nx, ny = cx + rng.uniform(-0.3, 0.3) * w, cy + rng.uniform(-0.25, 0.2) * h
        nr = rng.uniform(4, 16)
        img += rng.uniform(20, 55) * np.exp(-((xx - nx) ** 2 + (yy - ny) ** 2) / (nr * nr))
    if rng.random() < 0.5:  # a central line or a tube
        x0 = cx + rng.uniform(-60, 60)
        path = x0 + 25 * np.sin(yy / rng.uniform(60, 140))
        img += 45 * np.exp(-(((xx - path) / 2.5) ** 2)) * (yy < cy + rng.uniform(0, 120))
    img = img * rng.uniform(0.88, 1.1) + rng.uniform(-10, 10)
    grain = np.asarray(
        Image.fromarray((rng.random((h // 2, w // 2)) * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    img += (grain - 127) * 0.08 + rng.normal(0, 2.5, img.shape)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.0))
    draw = ImageDraw.Draw(im)
    draw.text((30 + rng.uniform(0, 20), 30), "R", font=_font(0, 30), fill=235)
    draw.text((w - 180, h - 40), f"ID {int(rng.integers(100000, 999999))}  {int(rng.integers(1, 28)):02d}/11",
              font=_font(1, 14), fill=220)
    return im.convert("RGB")


KINDS: dict[str, Callable[[int], Image.Image]] = {
    "photo": photo,
    "scan": lambda seed: scan(seed, template=seed % 5),
    "ecg": ecg,
    "chest": lambda seed: chest_film(seed, template=seed % 7),
}


def protected_set(count: int) -> list[tuple[str, int, Image.Image]]:
    """``count`` images to protect, the four kinds in turn: (kind, seed, image)."""
    kinds = list(KINDS)
    return [(kinds[i % 4], 1_000 + i, KINDS[kinds[i % 4]](1_000 + i)) for i in range(count)]


def unrelated_set(count: int) -> list[tuple[str, int, Image.Image]]:
    """``count`` images that copy nothing in :func:`protected_set` but look like it: the same
    kinds from other seeds, so scans share forms, ECGs share paper and layout, and every
    chest film shares an anatomy template with protected films of other patients."""
    kinds = list(KINDS)
    return [(kinds[i % 4], 500_000 + i, KINDS[kinds[i % 4]](500_000 + i)) for i in range(count)]


# Real photographs shipped inside scikit-image's wheel (skimage/data/), each public domain,
# CC0 or "no known copyright restrictions" per its docstring: the first ten are protected in
# the benchmark, the others are unrelated images. Used when scikit-image is installed.
SAMPLE_PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "immunohistochemistry", "retina", "hubble_deep_field",
    "rocket", "coins", "cell", "grass", "gravel", "brick", "text", "moon", "page",
)


def sample_photos() -> list[tuple[str, Image.Image]]:
    """(name, image) of :data:`SAMPLE_PHOTOS`; empty without scikit-image."""
    try:
        import skimage.data  # type: ignore[import-untyped]
    except ImportError:
        return []
    return [(name, Image.fromarray(getattr(skimage.data, name)())) for name in SAMPLE_PHOTOS]


def sibling_film(protected_seed: int) -> Image.Image:
    """Another patient's film on the protected film's own anatomy template."""
    return chest_film(900_000 + protected_seed, template=protected_seed % 7)


def sibling_scan(protected_seed: int) -> Image.Image:
    """Another patient's report on the protected report's own form."""
    return scan(900_000 + protected_seed, template=protected_seed % 5)


# ---------------------------------------------------------------- how people copy images


def encode(im: Image.Image, fmt: str = "PNG", quality: int = 90) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        im.convert("RGB" if im.mode != "L" else "L").save(out, "JPEG", quality=quality)
    else:
        im.save(out, fmt)
    return out.getvalue()


def jpeg(im: Image.Image, quality: int) -> bytes:
    return encode(im, "JPEG", quality)


def resized(im: Image.Image, factor: float) -> Image.Image:
    size = (max(1, round(im.width * factor)), max(1, round(im.height * factor)))
    return im.resize(size, Image.Resampling.BICUBIC if factor > 1 else Image.Resampling.LANCZOS)


def cropped(im: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    """Fractions of the width/height cut from each edge."""
    return im.crop((round(im.width * left), round(im.height * top),
                    round(im.width * (1 - right)), round(im.height * (1 - bottom))))


def screenshot(im: Image.Image, seed: int) -> Image.Image:
    """The image as it appears in a screenshot of a chat window: a title bar, a room list
    with names, message bubbles, and the image shown at a size that fits the timeline."""
    rng = np.random.default_rng(seed)
    w, h = int(rng.choice([1280, 1366, 1440])), int(rng.choice([800, 900]))
    canvas = Image.new("RGB", (w, h), (248, 248, 250))
    draw = ImageDraw.Draw(canvas)
    font = _font(0, 14)
    draw.rectangle((0, 0, w, 36), fill=(40, 44, 52))
    draw.text((12, 10), "Ward 7 - handover", font=font, fill=(230, 230, 230))
    draw.rectangle((0, 36, 260, h), fill=(235, 237, 240))
    for i in range(14):
        draw.text((16, 56 + i * 48), _words(rng, 2).title(), font=font, fill=(50, 50, 60))
    scale = min((w - 340) / im.width, (h - 220) / im.height) * rng.uniform(0.6, 1.0)
    shown = resized(im, scale)
    x, y = 300 + int(rng.integers(0, max(1, w - 320 - shown.width))), 110
    draw.text((x, 70), _words(rng, 6), font=font, fill=(20, 20, 20))
    draw.rounded_rectangle((x - 6, y - 6, x + shown.width + 6, y + shown.height + 6), 8, fill=(225, 230, 240))
    canvas.paste(shown.convert("RGB"), (x, y))
    draw.text((x, y + shown.height + 16), _words(rng, 5), font=font, fill=(20, 20, 20))
    return canvas


def _png(im: Image.Image) -> bytes:
    return encode(im, "PNG")


# name -> (how it is applied to one image, seeded). Each is one of the required transforms
# at a parameter drawn from its whole range, so recall is reported per transform.
RECEIVED_KEY = b"corpus-watermark-key"
RECEIVED_MARK = "m-corpus"


def received_viewer() -> Viewer:
    """The ward member every received copy here was rendered for, always in the same minute."""
    from datetime import UTC, datetime

    from carematrix.watermark import Viewer

    return Viewer("欧阳明远 Ouyang Mingyuan", "D3107", "@d3107:hospital.example", datetime(2026, 12, 1, 8, 0, tzinfo=UTC))


def received_by(data: bytes) -> bytes:
    """The protected JPEG ``data`` as a ward member received it: rendered for them with the
    per-viewer watermark (name, staff number, Matrix ID and the minute across it, and the
    hidden pattern), as the media gate serves it. Always the same member and minute, so the
    accuracy run can make the same rendering again as the homeserver does."""
    from carematrix.watermark import render_for_viewer

    return render_for_viewer(data, received_viewer(), RECEIVED_KEY, RECEIVED_MARK).data


def received_again(data: bytes, grey: np.ndarray) -> np.ndarray:
    """The copy :func:`received_by` gives, made again in grey as the homeserver's no-forward
    check makes it: from the original's grey ``grey`` (of ``data``), at its size."""
    from carematrix.watermark.remake import received_grey, upright_size

    return received_grey(grey, upright_size(data), received_viewer(), RECEIVED_KEY, RECEIVED_MARK)


def delivered(im: Image.Image) -> Image.Image:
    """The protected image ``im`` (filed as ``jpeg(im, 92)``) as :func:`received_by` gives it."""
    return Image.open(io.BytesIO(received_by(jpeg(im, 92)))).convert("RGB")


TRANSFORMS: dict[str, Callable[[Image.Image, np.random.Generator], bytes]] = {
    "jpeg q50-95": lambda im, rng: jpeg(im, int(rng.integers(50, 96))),
    "jpeg q85, 99 %": lambda im, rng: jpeg(resized(im, 0.99), 85),
    "resize 25-50 %": lambda im, rng: jpeg(resized(im, float(rng.uniform(0.25, 0.5))), 90),
    "resize 50-200 %": lambda im, rng: jpeg(resized(im, float(rng.uniform(0.5, 2.0))), 90),
    "crop <= 20 % per edge": lambda im, rng: jpeg(cropped(im, *rng.uniform(0, 0.2, 4)), 90),
    "greyscale": lambda im, rng: jpeg(im.convert("L"), 90),
    "screenshot": lambda im, rng: _png(screenshot(im, int(rng.integers(0, 1 << 30)))),
    # what a ward member actually has to forward: the copy the server marked for them
    "as received (watermarked), re-saved 70-100 %": lambda im, rng: jpeg(
        resized(delivered(im), float(rng.uniform(0.7, 1.0))), int(rng.integers(70, 96))),
}
