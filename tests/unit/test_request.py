"""Validation at the edge: every bad field gets an error that names it and says what is allowed."""

import pytest

from kleinserve.errors import InvalidRequest
from kleinserve.models import resolve_model
from kleinserve.request import MAX_SEED, build_request, parse_size

from support.images import random_image

DISTILLED = resolve_model("flux.2-klein-4b")
BASE = resolve_model("flux.2-klein-base-4b")


def test_defaults_are_filled_in():
    request = build_request(DISTILLED, prompt="a fox")
    assert (request.width, request.height, request.steps, request.guidance) == (1024, 1024, 4, 1.0)
    assert request.num_images == 1 and request.images == () and request.negative_prompt == ""
    assert 0 <= request.seed < 2**32
    base = build_request(BASE, prompt="a fox")
    assert (base.steps, base.guidance) == (50, 4.0)


def test_a_missing_seed_is_picked_at_random_and_kept():
    seeds = {build_request(DISTILLED, prompt="x").seed for _ in range(5)}
    assert len(seeds) > 1
    assert build_request(DISTILLED, prompt="x", seed=0).seed == 0
    assert build_request(DISTILLED, prompt="x", seed=MAX_SEED).seed == MAX_SEED


def test_unicode_prompts_are_fine():
    assert build_request(DISTILLED, prompt="猫 🐱 ünïcødé").prompt == "猫 🐱 ünïcødé"


def test_the_output_size_follows_the_first_reference():
    request = build_request(DISTILLED, prompt="x", images=[random_image(1100, 1000), random_image(64, 64)])
    assert (request.width, request.height) == (1072, 976)  # 1 MP cap (1073x976), floored to 16
    assert build_request(DISTILLED, prompt="x", images=[random_image(130, 75)]).width == 128


def test_a_reference_size_beyond_the_limit_is_scaled_into_it():
    request = build_request(DISTILLED, prompt="x", images=[random_image(2800, 350)])  # 8:1, under 1 MP
    assert (request.width, request.height) == (2048, 240)  # 2800x336 scaled by 2048/2800, floored to 16


BAD = [
    (dict(prompt=""), "prompt", "must not be empty"),
    (dict(prompt="   "), "prompt", "must not be empty"),
    (dict(prompt=None), "prompt", "must be a string"),
    (dict(prompt=42), "prompt", "must be a string"),
    (dict(prompt="x" * 32_001), "prompt", "limit is 32000"),
    (dict(prompt="a\x00b"), "prompt", "NUL"),
    (dict(width=1000, height=1024), "width", "use 992 or 1008"),
    (dict(width=1024, height=4096), "height", "from 64 to 2048"),
    (dict(width=32, height=64), "width", "from 64 to 2048"),
    (dict(width="1024", height=1024), "width", "must be an integer"),
    (dict(width=1024), "height", "give both width and height"),
    (dict(width=True, height=64), "width", "must be an integer"),
    (dict(steps=3), "steps", "from 4 to 8"),
    (dict(steps=9), "steps", "from 4 to 8"),
    (dict(steps="four"), "steps", "must be an integer"),
    (dict(steps=4.5), "steps", "must be an integer"),
    (dict(guidance=3.5), "guidance", "step-distilled"),
    (dict(guidance="high"), "guidance", "must be a number"),
    (dict(negative_prompt="blurry"), "negative_prompt", "Base model"),
    (dict(seed=-1), "seed", "from 0 to"),
    (dict(seed=1.5), "seed", "must be an integer"),
    (dict(seed=MAX_SEED, num_images=2), "seed", "from 0 to"),
    (dict(num_images=0), "num_images", "from 1 to 4"),
    (dict(num_images=5), "num_images", "from 1 to 4"),
]


@pytest.mark.parametrize("fields,field,message", BAD, ids=[f"{f}-{m}" for _, f, m in BAD])
def test_bad_fields_are_named_with_the_fix(fields, field, message):
    with pytest.raises(InvalidRequest) as error:
        build_request(DISTILLED, **{"prompt": "a fox", **fields})
    assert error.value.field == field
    assert message in str(error.value)


def test_base_model_ranges():
    assert build_request(BASE, prompt="x", guidance=0.0, steps=1).guidance == 0.0
    with pytest.raises(InvalidRequest, match="guidance: must be from 0 to 30"):
        build_request(BASE, prompt="x", guidance=31)
    with pytest.raises(InvalidRequest, match="steps: must be from 1 to 100"):
        build_request(BASE, prompt="x", steps=101)
    with pytest.raises(InvalidRequest, match="negative_prompt: must be a string"):
        build_request(BASE, prompt="x", negative_prompt=["no"])


@pytest.mark.parametrize(
    "images,field,message",
    [
        ([random_image(64, 64)] * 5, "images", "at most 4"),
        (["not an image"], "images[0]", "must be an image"),
        ([random_image(64, 64), random_image(63, 200)], "images[1]", "at least 64"),
        ([random_image(900, 100)], "images[0]", "aspect ratio must be at most 8:1"),
    ],
)
def test_bad_reference_images(images, field, message):
    with pytest.raises(InvalidRequest) as error:
        build_request(DISTILLED, prompt="edit", images=images)
    assert error.value.field == field and message in str(error.value)


def test_a_single_image_counts_as_one_reference():
    assert len(build_request(DISTILLED, prompt="x", images=random_image(64, 64)).images) == 1


def test_zero_to_four_references_are_accepted():
    for count in range(5):
        assert (
            len(build_request(DISTILLED, prompt="x", images=[random_image(64, 64)] * count).images) == count
        )


@pytest.mark.parametrize("text", ["1024", "axb", "1024x", "-64x64", "", "1024x768x3"])
def test_parse_size_rejects_non_sizes(text):
    with pytest.raises(InvalidRequest, match="WIDTHxHEIGHT"):
        parse_size(text)


def test_parse_size():
    assert parse_size("1024x768") == (1024, 768)
    assert parse_size(" 512X512 ") == (512, 512)
