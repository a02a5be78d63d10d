"""Decoding user images with clear errors; encoding results as png/jpeg/webp."""

import io

import numpy as np
import pytest
from PIL import Image

from kleinserve.errors import InvalidRequest
from kleinserve.imaging import decode_image, encode_image

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
