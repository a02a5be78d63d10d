"""The Black Forest Labs dialect's own rules, without a server: BflRequest's checks name BFL's fields, errors
render in BFL's `{"detail"}` shape (a field's as a 422), and served models take BFL's path names."""

import hashlib
import hmac

import pytest

from kleinserve.api.bfl.routes import _refuse_unsupported, _to_request, bfl_name
from kleinserve.api.bfl.schemas import BflRequest
from kleinserve.api.bfl.webhook import bfl_signature
from kleinserve.api.dialect_request import validated
from kleinserve.api.errors import ApiError, invalid
from kleinserve.models import registered_model
from kleinserve.service.served_models import ServedModel


def served(name: str) -> ServedModel:
    return ServedModel(spec=registered_model(name))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "prompt"),
        ({"prompt": "a", "input_image": 5}, "input_image"),
        ({"prompt": "a", "seed": True}, "seed"),
        ({"prompt": "a", "width": "64"}, "width"),
        ({"prompt": "a", "guidance": "high"}, "guidance"),
        ({"prompt": "a", "output_format": "gif"}, "output_format"),
        ({"prompt": "a", "safety_tolerance": 7}, "safety_tolerance"),
    ],
)
def test_a_wrong_field_is_named(fields, field):
    with pytest.raises(ApiError) as raised:
        validated(BflRequest, fields)
    assert raised.value.param == field


def test_a_fifth_image_is_refused_not_dropped():
    with pytest.raises(ApiError) as raised:
        _refuse_unsupported({"input_image_5": "x"})
    assert raised.value.param == "input_image_5"
    _refuse_unsupported({"webhook_url": "https://a", "webhook_secret": "s"})  # webhooks are sent (live tests)


def test_the_bfl_webhook_signature_is_the_hex_hmac_of_the_body():
    content = b'{"id":"a","status":"Ready"}'
    expected = hmac.new(b"key", content, hashlib.sha256).hexdigest()
    assert bfl_signature("key", content) == f"sha256={expected}"


def test_a_field_error_is_a_fastapi_422_and_others_a_detail_string():
    assert invalid("width", "not a multiple of 16").bfl_body() == (
        422,
        {"detail": [{"loc": ["body", "width"], "msg": "width: not a multiple of 16", "type": "value_error"}]},
    )
    assert ApiError(401, "a key is required").bfl_body() == (401, {"detail": "a key is required"})


def test_aspect_ratio_sizes_and_guidance_on_distilled_and_base_models():
    distilled, base = served("flux.2-klein-4b"), served("flux.2-klein-base-4b")
    request = _to_request(distilled, validated(BflRequest, {"prompt": "a", "aspect_ratio": "16:9"}), [])
    assert (request.width, request.height) == (1360, 768)
    with pytest.raises(ApiError) as raised:
        _to_request(distilled, validated(BflRequest, {"prompt": "a", "guidance": 3.5}), [])
    assert raised.value.param == "guidance"
    assert _to_request(base, validated(BflRequest, {"prompt": "a", "guidance": 3.5}), []).guidance == 3.5
    with pytest.raises(ApiError) as raised:
        _to_request(distilled, validated(BflRequest, {"prompt": "a", "aspect_ratio": "wide"}), [])
    assert raised.value.param == "aspect_ratio"


def test_served_models_take_bfls_names():
    assert bfl_name(served("flux.2-klein-9b-kv")) == "flux-2-klein-9b-kv"
    assert bfl_name(served("flux.2-klein-base-4b")) == "flux-2-klein-base-4b"
