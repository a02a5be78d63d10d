"""Decoding user images with clear errors; encoding results as png/jpeg/webp."""

import io

import numpy as np
import pytest
from PIL import Image

from kleinserve import imaging
from kleinserve.errors import InvalidRequest
from kleinserve.imaging import decode_image, encode_image, encode_png

from support.images import random_image


@pytest.mark.parametrize("fmt,pil_name", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_encode_round_trips(fmt, pil_name):
    pixels = np.asarray(random_image(80, 48))
    decoded = Image.open(io.BytesIO(encode_image(pixels, fmt)))
    assert decoded.format == pil_name and decoded.size == (80, 48)
    tolerance = 0 if fmt == "png" else 40
    assert np.abs(np.asarray(decoded.convert("RGB"), dtype=int) - pixels).mean() <= tolerance


def test_png_is_lossless():
    pixels = np.asarray(random_image(64, 64))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_image(pixels, "png")))), pixels)


def _decoded(data: bytes) -> Image.Image:
    Image.open(io.BytesIO(data)).verify()  # chunk CRCs and structure; verify() leaves the image unusable
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


@pytest.mark.parametrize(
    "width,height",
    [(1, 1), (1, 7), (7, 1), (1, 300), (300, 1), (17, 33), (333, 129), (1024, 1024), (2048, 2048)],
)
def test_rgb_png_takes_the_fast_path_and_keeps_every_pixel(width, height, monkeypatch):
    pixels = np.asarray(random_image(width, height, seed=width * height))
    monkeypatch.setattr(imaging.Image.Image, "save", None)  # Pillow's encoder is not the one that ran
    data = encode_image(pixels, "png")
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(_decoded(data)), pixels)


def test_png_fast_path_takes_rgb_pil_images_and_strided_arrays():
    pixels = np.asarray(random_image(96, 40))
    planar = np.ascontiguousarray(pixels.transpose(2, 0, 1)).transpose(1, 2, 0)  # the engine's layout
    assert not planar.flags.c_contiguous
    for image in (Image.fromarray(pixels), planar):
        np.testing.assert_array_equal(np.asarray(_decoded(encode_png(image))), pixels)


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "P", "1", "I;16"])
def test_png_of_other_modes_goes_through_pillow(mode):
    image = random_image(33, 21).convert(mode)
    decoded = _decoded(encode_png(image))
    assert decoded.size == image.size
    np.testing.assert_array_equal(np.asarray(decoded.convert(mode)), np.asarray(image))


@pytest.mark.parametrize(
    "shape,dtype", [((20, 30), np.uint8), ((20, 30, 4), np.uint8), ((20, 30), np.uint16)]
)
def test_png_of_other_arrays_goes_through_pillow(shape, dtype):
    pixels = np.random.default_rng(0).integers(0, 200, size=shape).astype(dtype)
    decoded = np.asarray(_decoded(encode_png(pixels)))
    np.testing.assert_array_equal(decoded.astype(dtype), pixels)


def test_png_falls_back_to_pillow_when_fpng_refuses(monkeypatch):
    monkeypatch.setattr(imaging.fpng, "from_ndarray", lambda array: b"")  # the binding's failure value
    pixels = np.asarray(random_image(40, 24))
    np.testing.assert_array_equal(np.asarray(_decoded(encode_png(pixels))), pixels)


def test_exif_orientation_is_applied():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    random_image(120, 64).save(buffer, "JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), "phone.jpg").size == (64, 120)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "is not an image"),
        (b"GIF89a garbage", "is not an image"),
        (encode_image(np.zeros((64, 64, 3), np.uint8), "png")[:60], "is a broken image"),
    ],
)
def test_broken_inputs_name_the_file(data, message):
    with pytest.raises(InvalidRequest) as error:
        decode_image(data, "upload.bin", field="image_urls[2]")
    assert (
        error.value.field == "image_urls[2]"
        and "upload.bin" in str(error.value)
        and message in str(error.value)
    )


def test_decompression_bombs_are_refused():
    buffer = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buffer, "PNG")  # 81 MP of zeros compresses to almost nothing
    with pytest.raises(InvalidRequest, match="at most 64 megapixels"):
        decode_image(buffer.getvalue(), "bomb.png")
