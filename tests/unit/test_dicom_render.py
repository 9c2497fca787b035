"""Rendering DICOM images for the chat: pydicom's sample files plus small synthetic objects
whose expected pixels can be worked out by hand from PS3.3 C.11."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from bridges.dicom import PRESETS, DicomRenderError, Rendered, render


def sample(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom sample {name} missing"
    return Path(str(path)).read_bytes()


def decoded(rendered: Rendered) -> np.ndarray:
    image = Image.open(io.BytesIO(rendered.data))
    assert image.format == ("PNG" if rendered.mimetype == "image/png" else "JPEG")
    assert (image.width, image.height) == (rendered.width, rendered.height)
    return np.asarray(image)


def synthetic(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 16,
              **attributes: object) -> Dataset:
    """A minimal CT-like object around ``pixels`` (frames first for multi-frame)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.InstanceNumber = 7
    ds.set_pixel_data(pixels, photometric, bits)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def as_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- pydicom sample files -------------------------------------------------------------------

def test_ct_small_without_window_gets_a_robust_automatic_one():
    rendered = render(sample("CT_small.dcm"))
    pixels = decoded(rendered)

    assert rendered.mimetype == "image/png"
    assert (rendered.width, rendered.height) == (128, 128)
    assert pixels.dtype == np.uint8 and pixels.ndim == 2
    # Both ends of the grey scale are used, and plenty of the image lies in between.
    assert (pixels < 20).mean() > 0.02
    assert (pixels > 235).mean() > 0.005
    assert ((pixels > 40) & (pixels < 215)).mean() > 0.3
    assert pixels.std() > 30
    assert rendered.window is not None and rendered.window[1] > 0
    assert rendered.description.startswith("CT · W")
    assert "auto" in rendered.description and rendered.description.endswith("image 1")


def test_window_from_the_object_is_used_and_described():
    rendered = render(sample("MR_small.dcm"))

    assert rendered.window == (600.0, 1600.0)
    assert rendered.description == "MR · W1600 L600 · image 1"
    assert decoded(rendered).std() > 20


def test_presets_override_the_window():
    data = sample("CT_small.dcm")
    default = decoded(render(data))
    lung = render(data, window=PRESETS["ct-lung"])
    bone = render(data, window=PRESETS["ct-bone"])

    assert lung.window == (-600.0, 1500.0)
    assert "W1500 L-600" in lung.description
    assert not np.array_equal(decoded(lung), default)
    assert not np.array_equal(decoded(lung), decoded(bone))
    # Soft tissue is white in a lung window and dark grey in a bone window.
    assert decoded(lung).mean() > decoded(bone).mean() + 40


def test_presets_are_center_width_pairs():
    assert PRESETS == {"ct-soft": (40, 400), "ct-lung": (-600, 1500), "ct-bone": (300, 1500),
                       "ct-brain": (40, 80)}


def test_colour_images_stay_colour():
    rgb = render(sample("examples_rgb_color.dcm"))
    palette = render(sample("examples_palette.dcm"))

    assert decoded(rgb).shape == (240, 320, 3)
    assert rgb.window is None and rgb.description == "US · colour · image 1"
    assert decoded(palette).shape == (350, 800, 3)
    assert decoded(palette).max() > 200


def test_ybr_multiframe_sample_renders_its_middle_frame_as_rgb():
    rendered = render(sample("examples_ybr_color.dcm"))

    assert decoded(rendered).shape == (240, 320, 3)
    assert rendered.description.endswith("frame 16 of 30")


def test_ybr_full_is_converted_to_rgb():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    ds = synthetic(ybr, "YBR_FULL", 8, Modality="OT", SOPClassUID=SecondaryCaptureImageStorage)

    out = decoded(render(as_bytes(ds)))

    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - rgb.astype(int)).max() <= 3


def test_jpeg_output():
    rendered = render(sample("CT_small.dcm"), fmt="jpeg")

    assert rendered.mimetype == "image/jpeg"
    assert decoded(rendered).shape == (128, 128)


def test_downscaling_respects_max_side_and_aspect_ratio():
    small = render(sample("CT_small.dcm"), max_side=50)
    assert (small.width, small.height) == (50, 50)
    assert decoded(small).shape == (50, 50)

    wide = synthetic(np.tile(np.arange(300, dtype=np.uint16), (200, 1)))
    rendered = render(wide, max_side=64)
    assert (rendered.width, rendered.height) == (64, 43)

    unchanged = render(wide, max_side=1024)
    assert (unchanged.width, unchanged.height) == (300, 200)


def test_accepts_a_dataset_as_well_as_bytes():
    ds = pydicom.dcmread(io.BytesIO(sample("MR_small.dcm")))
    assert render(ds).data == render(sample("MR_small.dcm")).data


# --- synthetic objects: exact values ------------------------------------------------------

def test_rescale_then_linear_window_clips_at_the_expected_pixels():
    # Stored value + intercept -1024 = HU; W400 L40 maps HU <= -160 to 0 and HU > 239 to 255.
    hu = np.array([[-1024, -160, -159, 40], [238, 239, 300, 3000]])
    ds = synthetic((hu + 1024).astype(np.uint16), RescaleSlope=1, RescaleIntercept=-1024,
                   WindowCenter=40, WindowWidth=400)

    out = decoded(render(as_bytes(ds)))

    # ((HU - 39.5) / 399 + 0.5) * 255, rounded (PS3.3 C.11.2.1.2.1).
    assert out.tolist() == [[0, 0, 1, 128], [254, 255, 255, 255]]


def test_rescale_slope_and_signed_pixels():
    # Same HU stored two ways: signed with slope 1, and unsigned with slope 2 / intercept.
    hu = np.array([[-1000, -200], [40, 1000]])
    signed = synthetic(hu.astype(np.int16), RescaleSlope=1, RescaleIntercept=0,
                       WindowCenter=40, WindowWidth=400)
    halved = synthetic(((hu + 1024) // 2).astype(np.uint16), RescaleSlope=2,
                       RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)

    assert signed.PixelRepresentation == 1
    expected = [[0, 0], [128, 255]]
    assert decoded(render(as_bytes(signed))).tolist() == expected
    assert decoded(render(as_bytes(halved))).tolist() == expected


def test_multi_valued_window_uses_the_first():
    ds = synthetic(np.array([[1064, 1324]], dtype=np.uint16), RescaleIntercept=-1024,
                   RescaleSlope=1, WindowCenter=[40, 300], WindowWidth=[400, 1500])

    rendered = render(ds)

    assert rendered.window == (40.0, 400.0)
    assert decoded(rendered).tolist() == [[128, 255]]


def test_monochrome1_is_inverted():
    ramp = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 16)
    window = {"WindowCenter": 2048, "WindowWidth": 4096}
    mono2 = decoded(render(synthetic(ramp, "MONOCHROME2", **window)))
    mono1 = decoded(render(synthetic(ramp, "MONOCHROME1", **window)))

    assert mono2[0, 0] == 0 and mono2[-1, -1] > 240
    assert np.array_equal(mono1, 255 - mono2)


def test_sigmoid_voi_function():
    ds = synthetic(np.array([[0, 1000, 2000]], dtype=np.uint16), WindowCenter=1000,
                   WindowWidth=400, VOILUTFunction="SIGMOID")

    out = decoded(render(ds))

    assert out[0, 1] == 128
    assert out[0, 0] < 2 and out[0, 2] > 253
    assert "sigmoid" in render(ds).description


def test_multi_frame_renders_the_middle_frame():
    frames = np.stack([np.full((8, 8), value, dtype=np.uint16) for value in (100, 2000, 3900)])
    ds = synthetic(frames, WindowCenter=2000, WindowWidth=1000)
    assert ds.NumberOfFrames == 3

    rendered = render(as_bytes(ds))

    assert np.unique(decoded(rendered)).tolist() == [128]
    assert rendered.description == "CT · W1000 L2000 · image 7 · frame 2 of 3"


def test_automatic_window_ignores_a_few_extreme_pixels():
    pixels = np.tile(np.linspace(0, 1000, 64).astype(np.uint16), (64, 1))
    pixels[0, 0] = 65000  # one hot pixel must not squash the image into black
    out = decoded(render(synthetic(pixels)))

    assert out[:, 32].mean() > 100
    assert out[:, 60].min() > 230 and out[:, 2].max() < 25


def test_constant_image_renders_without_error():
    rendered = render(synthetic(np.full((4, 4), 7, dtype=np.uint16)))
    assert np.unique(decoded(rendered)).size == 1


# --- what cannot be rendered ----------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"%PDF-1.7 not an image", bytes(200)])
def test_non_dicom_bytes_are_refused(data):
    with pytest.raises(DicomRenderError, match="DICOM file"):
        render(data)


def test_object_without_pixels_names_its_sop_class():
    with pytest.raises(DicomRenderError) as caught:
        render(sample("test-SR.dcm"))
    assert str(caught.value) == (
        "no image in this DICOM object (SOP class Comprehensive SR Storage "
        "(1.2.840.10008.5.1.4.1.1.88.33))"
    )


def test_synthetic_dataset_without_pixels():
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    with pytest.raises(DicomRenderError, match=r"^no image in this DICOM object \(SOP class "
                                               r"Basic Text SR Storage"):
        render(ds)


def test_unknown_transfer_syntax_is_named():
    ds = synthetic(np.zeros((4, 4), dtype=np.uint16))
    ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.99.1"
    with pytest.raises(DicomRenderError, match=r"transfer syntax 1\.2\.826\.0\.1\.3680043\.99\.1 "
                                               r"is not supported"):
        render(ds)


def test_compressed_syntax_without_an_installed_decoder_is_named():
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    with pytest.raises(DicomRenderError, match=r"JPEG-LS Lossless Image Compression "
                                               r"\(1\.2\.840\.10008\.1\.2\.4\.80\) is not supported"):
        render(sample("MR_small_jpeg_ls_lossless.dcm"))


def test_truncated_pixel_data_is_a_render_error():
    with pytest.raises(DicomRenderError, match="could not decode the pixel data"):
        render(sample("MR_truncated.dcm"))


def test_caller_mistakes_are_value_errors():
    data = sample("CT_small.dcm")
    with pytest.raises(ValueError, match="format"):
        render(data, fmt="GIF")
    with pytest.raises(ValueError, match="window"):
        render(data, window=(40, 0))
    with pytest.raises(ValueError, match="max_side"):
        render(data, max_side=0)
