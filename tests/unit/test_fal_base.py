"""The fal dialect's Base endpoints: fal's own defaults and limits (28 steps of 4..50, guidance 5 of 0..20),
`acceleration` accepted and inert, and the distilled endpoints unchanged (api/fal/schemas.py, routes.py)."""

from types import SimpleNamespace

import pytest

from kleinserve.api.dialect_request import validated
from kleinserve.api.errors import ApiError
from kleinserve.api.fal import routes
from kleinserve.api.fal.schemas import ACCELERATION_NOTE, FalBaseInput, FalInput, step_range
from kleinserve.models import resolve_model
from kleinserve.request import build_request

BASE = resolve_model("fal-ai/flux-2/klein/4b/base")
DISTILLED = resolve_model("fal-ai/flux-2/klein/4b")


def _request(spec, **fields):
    schema = FalBaseInput if spec.uses_cfg else FalInput
    body = validated(schema, {"prompt": "p", **fields}, endpoint="e", edit=False, max_images=4)
    return routes._to_request(SimpleNamespace(spec=spec), body, [], 64, 64)


def _refusal(spec, **fields) -> tuple[int, list, str]:
    with pytest.raises(ApiError) as refused:
        _request(spec, **fields)
    status, body = refused.value.fal_body()
    (detail,) = body["detail"]
    return status, detail["loc"], detail["msg"]


def test_a_base_body_without_steps_or_guidance_takes_fals_defaults():
    request = _request(BASE)
    assert (request.steps, request.guidance, request.negative_prompt) == (28, 5.0, "")


def test_the_openai_side_keeps_the_models_own_base_defaults():
    request = build_request(BASE, prompt="p")
    assert (request.steps, request.guidance) == (50, 4.0)


@pytest.mark.parametrize(("steps", "guidance"), [(4, 0), (50, 20), (28.0, 7.5), (12, 1)])
def test_base_steps_and_guidance_within_fals_limits_are_used_as_sent(steps, guidance):
    request = _request(BASE, num_inference_steps=steps, guidance_scale=guidance)
    assert (request.steps, request.guidance) == (int(steps), float(guidance))


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"num_inference_steps": 51}, "num_inference_steps", "from 4 to 50"),
        ({"num_inference_steps": 3}, "num_inference_steps", "from 4 to 50"),
        ({"num_inference_steps": 28.5}, "num_inference_steps", "an integer"),
        ({"num_inference_steps": None}, "num_inference_steps", "an integer"),
        ({"num_inference_steps": True}, "num_inference_steps", "an integer"),
        ({"num_inference_steps": 10**400}, "num_inference_steps", "from 4 to 50"),
        ({"guidance_scale": 20.5}, "guidance_scale", "from 0 to 20"),
        ({"guidance_scale": -1}, "guidance_scale", "from 0 to 20"),
        ({"guidance_scale": "5"}, "guidance_scale", "a number"),
        ({"guidance_scale": float("nan")}, "guidance_scale", "a number"),
        ({"acceleration": "max"}, "acceleration", "none, regular, high"),
        ({"acceleration": None}, "acceleration", "none, regular, high"),
    ],
)
def test_out_of_range_base_fields_are_a_422_naming_the_field(fields, field, words):
    status, loc, message = _refusal(BASE, **fields)
    assert status == 422 and loc == ["body", field] and words in message and len(message) < 120


@pytest.mark.parametrize("level", ["none", "regular", "high"])
def test_acceleration_is_accepted_and_changes_nothing(level):
    assert _request(BASE, acceleration=level, seed=3) == _request(BASE, seed=3)


def test_distilled_endpoints_are_unchanged():
    request = _request(DISTILLED)
    assert (request.steps, request.guidance) == (4, 1.0)
    assert _refusal(DISTILLED, num_inference_steps=28)[1:] == (
        ["body", "num_inference_steps"],
        "must be from 4 to 8, got 28",
    )


def test_distilled_endpoints_ignore_acceleration_as_fal_ignores_fields_it_does_not_document():
    assert _request(DISTILLED, acceleration="high", seed=1) == _request(DISTILLED, seed=1)
    assert _request(DISTILLED, acceleration="max", loras=[], seed=1) == _request(DISTILLED, seed=1)


@pytest.mark.parametrize(("field", "value"), [("guidance_scale", 2.5), ("negative_prompt", "blurry")])
def test_a_field_a_distilled_endpoint_cannot_honour_is_refused_not_dropped(field, value):
    status, loc, message = _refusal(DISTILLED, **{field: value})
    assert status == 422 and loc == ["body", field] and "step-distilled" in message


def test_what_ai_sdk_fal_sends_for_a_plain_distilled_request_is_taken():
    body = {"seed": 5, "image_size": {"width": 64, "height": 64}, "num_images": 1, "sync_mode": False,
            "enable_safety_checker": True, "output_format": "png", "guidance_scale": 1,
            "negative_prompt": ""}  # fmt: skip
    assert _request(DISTILLED, **body).seed == 5


def test_the_documented_body_is_each_endpoints_true_defaults_and_limits():
    distilled, base, distilled_lora, base_lora = (
        alternative["properties"]
        for alternative in routes.BODY["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    )
    assert "loras" not in distilled and "loras" not in base  # the /lora endpoints' bodies add it
    assert distilled_lora == {**distilled, "loras": distilled_lora["loras"]}
    assert base_lora == {**base, "loras": base_lora["loras"]}
    steps = base["num_inference_steps"]
    assert (steps["default"], steps["minimum"], steps["maximum"]) == (28, 4, 50)
    guidance = base["guidance_scale"]
    assert (guidance["default"], guidance["minimum"], guidance["maximum"]) == (5.0, 0, 20)
    assert (
        base["acceleration"]["enum"] == ["none", "regular", "high"]
        and base["acceleration"]["default"] == "regular"
    )
    assert base["acceleration"]["description"] == ACCELERATION_NOTE and "ignored" in ACCELERATION_NOTE
    assert "acceleration" not in distilled
    assert "minimum" in str(distilled["num_inference_steps"]) and "'maximum': 8" in str(
        distilled["num_inference_steps"]
    )


def test_an_empty_image_url_on_a_text_to_image_endpoint_is_refused_not_a_server_error():
    # found by test_openapi_fuzz: "image_url": "" passed the check, then its name outnumbered the URLs (500)
    status, loc, message = _refusal(DISTILLED, image_url="")
    assert status == 422 and loc == ["body", "image_url"] and "only edit endpoints" in message
    assert _request(DISTILLED, image_url=None, seed=2) == _request(DISTILLED, seed=2)  # null sends none


def test_the_console_offers_the_steps_its_fal_route_takes():
    assert step_range(BASE) == (4, 50) and step_range(DISTILLED) == (4, 8)
    assert (BASE.min_steps, BASE.max_steps) == (1, 100)  # the model's own range stays for the OpenAI routes
