"""The dialect toolkit (api/dialect_request.py, api/dialect_response.py) and the one image-format table."""

import asyncio
import base64

import pytest
from PIL import Image

from kleinserve.api.dialect_request import COMMON_FIELDS, field_error, to_request
from kleinserve.api.dialect_response import (
    demo_warning,
    generation_headers,
    image_base64,
    image_url,
    rounded_timings,
)
from kleinserve.api.errors import ApiError
from kleinserve.errors import InvalidRequest
from kleinserve.imaging import CONTENT_TYPES, EXTENSIONS, FORMAT_NAMES, OUTPUT_FORMATS, extension_of
from kleinserve.models import resolve_model
from kleinserve.service.outputs import OutputImage
from kleinserve.service.served_models import DEMO_LABEL, ServedModel
from kleinserve.storage.store import content_type_of, image_key, is_valid_key

SPEC = resolve_model("flux.2-klein-4b")
OPENAI = {**COMMON_FIELDS, "num_images": "n", "width": "size", "height": "size", "images": "image"}
FAL = {**COMMON_FIELDS, "num_images": "num_images", "width": "image_size", "height": "image_size",
       "images": "image_urls"}  # fmt: skip


def _refused(names, field, reason, index="field") -> ApiError:
    return field_error(InvalidRequest(field, reason), names, index)


# --- fields -> GenerationRequest -------------------------------------------------------------------


def test_fields_become_build_request_arguments():
    fields = {"prompt": "a fox", "num_inference_steps": 4, "seed": 7, "num_images": 2, "ignored": 1}
    request = to_request(SPEC, fields, FAL, width=512, height=256)
    assert (request.prompt, request.steps, request.seed, request.num_images) == ("a fox", 4, 7, 2)
    assert (request.width, request.height) == (512, 256)


def test_a_field_left_out_takes_the_default_but_null_is_a_value():
    assert to_request(SPEC, {"prompt": "p"}, FAL).num_images == 1
    with pytest.raises(ApiError) as refused:
        to_request(SPEC, {"prompt": "p", "num_images": None}, FAL)
    assert refused.value.param == "num_images"


def test_given_arguments_win_and_read_converts():
    seen = []

    def read(fields, name):
        seen.append(name)
        return int(fields[name]) if name == "seed" else fields[name]

    request = to_request(SPEC, {"prompt": "p", "seed": "12", "n": 9}, OPENAI, read=read, num_images=3)
    assert request.seed == 12 and request.num_images == 3
    assert seen == ["prompt", "seed"]  # in COMMON_FIELDS' order; `n` was given, so never read


def test_errors_name_the_dialects_field():
    with pytest.raises(ApiError) as refused:
        to_request(SPEC, {"prompt": "p", "num_inference_steps": 99}, OPENAI)
    assert refused.value.status == 400 and refused.value.param == "num_inference_steps"
    assert refused.value.message == "num_inference_steps: must be from 4 to 8, got 99"


def test_a_side_is_named_in_the_message_of_the_field_holding_both():
    refused = _refused(OPENAI, "width", "must be an integer")
    assert (refused.param, refused.message) == ("size", "size: width must be an integer")
    assert _refused(FAL, "height", "too big").message == "image_size: height too big"


@pytest.mark.parametrize(
    ("names", "index", "param", "message"),
    [
        (FAL, "field", "image_urls[1]", "image_urls[1]: is 32x32"),
        (OPENAI, "message", "image", "image: image [1] is 32x32"),
        ({**FAL, "images": "image_url"}, "nowhere", "image_url", "image_url: is 32x32"),
    ],
)
def test_where_an_items_index_goes(names, index, param, message):
    refused = _refused(names, "images[1]", "is 32x32", index)
    assert (refused.param, refused.message) == (param, message)


def test_an_argument_without_a_dialect_name_keeps_its_own():
    assert _refused(OPENAI, "images", "5 given").param == "image"
    assert _refused(FAL, "something[2]", "odd").param == "something[2]"


# --- output images and headers ---------------------------------------------------------------------


class _Files:
    def file_url(self, key: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/files/{key}"


def _image(key=None, data=b"\x89PNG", content_type="image/png") -> OutputImage:
    return OutputImage(data, content_type, 64, 64, key, len(data))


def test_a_stored_image_is_its_url_an_inline_one_a_data_uri():
    stored = asyncio.run(image_url(_Files(), _image(key="ab/0.png"), "http://host:8000/"))
    assert stored == "http://host:8000/files/ab/0.png"
    inline = asyncio.run(image_url(_Files(), _image(data=b"abc", content_type="image/webp"), "http://h/"))
    assert inline == "data:image/webp;base64," + base64.b64encode(b"abc").decode()
    assert asyncio.run(image_base64(_image(data=b"abc"))) == "YWJj"


def test_generation_headers_carry_the_job_id_and_the_demo_warning():
    plain, demo = ServedModel(SPEC), ServedModel(SPEC, demo=True)
    assert generation_headers(plain, "j1", "x-request-id") == {
        "x-request-id": "j1",
        "x-kleinserve-job-id": "j1",
    }
    assert generation_headers(demo, "j1", "x-fal-request-id") == {
        "x-fal-request-id": "j1", "x-kleinserve-job-id": "j1", "x-kleinserve-warning": DEMO_LABEL,
    }  # fmt: skip
    assert demo_warning(plain) == {} and demo_warning(demo) == {"warning": DEMO_LABEL}


def test_timings_are_rounded_to_a_tenth_of_a_millisecond():
    assert rounded_timings({"denoise": 0.123456, "queue": 0.0}) == {"denoise": 0.1235, "queue": 0.0}


# --- the one format table --------------------------------------------------------------------------


def test_every_format_mapping_reads_the_one_table():
    assert CONTENT_TYPES == {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
    assert FORMAT_NAMES == {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
    assert EXTENSIONS == {".png": "png", ".jpeg": "jpeg", ".jpg": "jpeg", ".webp": "webp"}
    assert [extension_of(fmt.content_type) for fmt in OUTPUT_FORMATS.values()] == ["png", "jpg", "webp"]
    for name, fmt in OUTPUT_FORMATS.items():
        key = image_key("0" * 32, 3, name)
        assert key == f"{'0' * 32}/3.{fmt.extension}" and is_valid_key(key)
        assert content_type_of(key) == fmt.content_type
        assert Image.registered_extensions()[f".{fmt.extension}"] == fmt.pillow
