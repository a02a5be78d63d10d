"""The Replicate dialect's rules without a server: bad input named as `input.<field>` in Replicate's
problem+json 422, the sizes aspect_ratio + output_megapixels give, tqdm step lines replicate-python's
Prediction.progress parses, the error shape on Replicate's paths only."""

import pytest

from kleinserve.api.dialect_request import validated
from kleinserve.api.errors import ApiError, is_replicate_path
from kleinserve.api.replicate.catalog import MODELS, output_size, takes_lora, version_id
from kleinserve.api.replicate.prediction import tqdm_line
from kleinserve.api.replicate.schemas import (
    PredictionBody,
    ReplicateBaseInput,
    ReplicateBaseLoraInput,
    ReplicateInput,
    ReplicateLoraInput,
    input_schema,
)


def replicate_error(schema, fields) -> dict:
    with pytest.raises(ApiError) as raised:
        validated(schema, fields)
    status, body = raised.value.replicate_body()
    assert status == 422 and body["status"] == 422 and body["title"] == "Input validation failed"
    return body


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({}, "input.prompt", "required"),
        ({"prompt": ["a"]}, "input.prompt", "string"),
        ({"prompt": "a", "seed": 1.5}, "input.seed", "integer"),
        ({"prompt": "a", "seed": True}, "input.seed", "integer"),
        ({"prompt": "a", "images": "https://example.com/a.png"}, "input.images", "list"),
        ({"prompt": "a", "images": ["https://example.com/a.png"] * 5}, "input.images", "at most 4"),
        ({"prompt": "a", "aspect_ratio": "2:1"}, "input.aspect_ratio", "match_input_image"),
        ({"prompt": "a", "output_megapixels": "7"}, "input.output_megapixels", "0.25, 0.5, 1, 2, 4"),
        ({"prompt": "a", "output_megapixels": 1}, "input.output_megapixels", "one of"),
        ({"prompt": "a", "go_fast": "yes"}, "input.go_fast", "true or false"),
        ({"prompt": "a", "output_format": "jpeg"}, "input.output_format", "jpg, png, webp"),
        ({"prompt": "a", "output_quality": 101}, "input.output_quality", "0 to 100"),
        ({"prompt": "a", "disable_safety_checker": 1}, "input.disable_safety_checker", "true or false"),
        ({"prompt": "a", "size": "big"}, "input.size", "WIDTHxHEIGHT"),
    ],
)
def test_a_wrong_input_is_named(fields, field, words):
    body = replicate_error(ReplicateInput, fields)
    assert body["detail"].startswith(f"- {field}: ") and words in body["detail"]
    [invalid] = body["invalid_fields"]
    assert invalid["field"] == field and words in invalid["description"]


def test_guidance_is_a_base_input_only():
    assert "guidance" not in ReplicateInput.model_fields
    assert validated(ReplicateBaseInput, {"prompt": "a", "guidance": 5}).guidance == 5
    body = replicate_error(ReplicateBaseInput, {"prompt": "a", "guidance": "high"})
    assert body["detail"].startswith("- input.guidance: must be a number")


def test_the_lora_models_take_lora_weights_and_a_scale_from_0_to_4():
    assert (
        input_schema(False, True) is ReplicateLoraInput and input_schema(True, True) is ReplicateBaseLoraInput
    )
    assert (
        input_schema(True, False) is ReplicateBaseInput and "lora_weights" not in ReplicateInput.model_fields
    )
    given = validated(
        ReplicateBaseLoraInput, {"prompt": "a", "guidance": 3, "lora_weights": "o/r", "lora_scale": 2}
    )
    assert (given.lora_weights, given.lora_scale, given.guidance) == ("o/r", 2, 3)
    body = replicate_error(ReplicateLoraInput, {"prompt": "a", "lora_weights": "o/r", "lora_scale": 4.5})
    assert body["detail"].startswith("- input.lora_scale: must be a number from 0 to 4")
    body = replicate_error(ReplicateLoraInput, {"prompt": "a", "lora_weights": ""})
    assert body["detail"].startswith("- input.lora_weights: must be a LoRA's URL")
    assert MODELS["flux-2-klein-base-9b-lora"] == "flux.2-klein-base-9b" and takes_lora(
        "flux-2-klein-4b-lora"
    )
    assert version_id("flux-2-klein-4b-lora") != version_id("flux-2-klein-4b")


def test_the_prediction_bodys_own_fields_are_named_without_input():
    body = replicate_error(PredictionBody, {"input": {}, "webhook_events_filter": ["finished"]})
    assert body["detail"].startswith("- webhook_events_filter: ") and "completed" in body["detail"]
    assert replicate_error(PredictionBody, {"input": "a cat"})["detail"].startswith("- input: ")


@pytest.mark.parametrize(
    ("ratio", "megapixels", "size"),
    [
        (None, None, (1024, 1024)),
        ("1:1", "0.25", (512, 512)),
        ("16:9", "1", (1360, 768)),
        ("9:21", "0.5", (464, 1104)),
        ("1:1", "4", (2048, 2048)),
        ("21:9", "4", (2048, 864)),  # the long side capped at 2048, the aspect kept
        ("match_input_image", "1", (1024, 1024)),  # without a reference: 1:1
    ],
)
def test_aspect_ratio_and_megapixels_give_replicates_sizes(ratio, megapixels, size):
    assert output_size(ratio, megapixels) == size


def test_match_input_image_takes_the_first_references_aspect():
    class Reference:
        width, height = 160, 128

    assert output_size("match_input_image", "0.25", Reference()) == (560, 448)


def test_tqdm_lines_parse_as_replicate_pythons_progress():
    prediction = pytest.importorskip("replicate.prediction")
    logs = "\n".join(tqdm_line(step, 4, 1.95) for step in range(3))
    assert tqdm_line(2, 4, 1.95) == " 50%|█████     | 2/4 [00:01<00:01,  1.95it/s]"
    progress = prediction.Prediction.Progress.parse(logs)
    assert (progress.percentage, progress.current, progress.total) == (0.5, 2, 4)


def test_version_ids_are_stable_64_hex_per_model():
    assert version_id("flux-2-klein-4b") == version_id("flux-2-klein-4b") != version_id("flux-2-klein-9b")
    assert len(version_id("flux-2-klein-4b")) == 64 and int(version_id("flux-2-klein-4b"), 16) >= 0


def test_problem_json_is_answered_on_replicates_paths_only():
    model = "/v1/models/black-forest-labs/flux-2-klein-4b"
    for path in ("/v1/predictions", "/v1/predictions/x/cancel", "/v1/files", "/v1/streams/x",
                 "/v1/models/someone/else/predictions", model):  # fmt: skip
        assert is_replicate_path(path), path
    for path in ("/v1/models", "/v1/models/flux.2-klein-4b", "/v1/images/generations", "/files/a/0.png"):
        assert not is_replicate_path(path), path
    status, body = ApiError(404, "no such prediction").replicate_body()
    assert (status, body) == (404, {"title": "Not Found", "detail": "no such prediction", "status": 404})
