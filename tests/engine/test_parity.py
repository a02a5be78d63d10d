"""Our engine against diffusers' Flux2KleinPipeline / Flux2KleinKVPipeline on the same checkpoint and seed."""

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinKVPipeline, Flux2KleinPipeline

from kleinserve.models import Variant
from kleinserve.request import build_request, reference_image_size

from support.images import cpu_generator, random_image

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def pipelines(checkpoints):
    def load(variant):
        cls = Flux2KleinKVPipeline if variant is Variant.KV else Flux2KleinPipeline
        pipe = cls.from_pretrained(checkpoints[variant], dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return {variant: load(variant) for variant in Variant}


def reference_output(pipe, request, **extra):
    kwargs = dict(
        prompt=request.prompt,
        height=request.height,
        width=request.width,
        num_inference_steps=request.steps,
        generator=cpu_generator(request.seed),
        output_type="np",
        **extra,
    )
    if request.images:
        kwargs["image"] = list(request.images)
    return pipe(**kwargs).images[0]


def ours(engine, request) -> np.ndarray:
    return engine.generate([request], output="float")[0].images[0]


def assert_same_image(actual: np.ndarray, expected: np.ndarray):
    assert actual.shape == expected.shape
    # The comparison means something only if the picture is not flat or clipped.
    assert expected.std() > 0.05 and ((expected > 0.01) & (expected < 0.99)).mean() > 0.5
    assert np.abs(actual - expected).max() <= TOLERANCE


@pytest.mark.parametrize("width,height", [(128, 80), (64, 112)])
def test_text_to_image_matches_diffusers(engine, spec, pipelines, width, height):
    request = build_request(spec, prompt="a lighthouse at dusk", width=width, height=height, seed=7)
    assert_same_image(ours(engine, request), reference_output(pipelines[Variant.DISTILLED], request))


@pytest.mark.parametrize("steps", [4, 5, 6, 7, 8])
def test_every_allowed_step_count_matches_diffusers(engine, spec, pipelines, steps):
    request = build_request(spec, prompt="steps", width=96, height=64, steps=steps, seed=steps)
    assert_same_image(ours(engine, request), reference_output(pipelines[Variant.DISTILLED], request))


EDIT_CASES = {
    "one": [(96, 80)],
    "two, different aspect ratios": [(80, 128), (200, 72)],
    # 1100x1000 is over 1 MP (Lanczos shrink), 130x75 and 333x97 need a center crop to multiples of 16.
    "four, one over 1 MP": [(1100, 1000), (130, 75), (64, 64), (333, 97)],
}


@pytest.mark.parametrize("sizes", EDIT_CASES.values(), ids=EDIT_CASES.keys())
def test_edits_match_diffusers(engine, spec, pipelines, sizes):
    images = [random_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    request = build_request(spec, prompt="make it winter", images=images, seed=11)
    assert (request.width, request.height) == reference_image_size(*sizes[0])
    assert_same_image(ours(engine, request), reference_output(pipelines[Variant.DISTILLED], request))


def test_edit_at_an_explicit_size_matches_diffusers(engine, spec, pipelines):
    images = [random_image(150, 90), random_image(90, 150, seed=1)]
    request = build_request(spec, prompt="side by side", images=images, width=128, height=64, seed=2)
    assert_same_image(ours(engine, request), reference_output(pipelines[Variant.DISTILLED], request))


def test_base_model_cfg_matches_diffusers(engines, pipelines):
    engine = engines[Variant.BASE]
    request = build_request(engine.spec, prompt="a bowl of fruit", width=80, height=64, steps=6, seed=3)
    assert request.guidance == 4.0
    assert_same_image(
        ours(engine, request), reference_output(pipelines[Variant.BASE], request, guidance_scale=4.0)
    )


def test_base_model_cfg_with_negative_prompt_and_reference_matches_diffusers(engines, pipelines):
    engine, pipe = engines[Variant.BASE], pipelines[Variant.BASE]
    request = build_request(
        engine.spec,
        prompt="a bowl of fruit",
        negative_prompt="blurry, dark",
        images=[random_image(96, 96)],
        guidance=2.5,
        steps=5,
        seed=4,
    )
    negative_embeds, _ = pipe.encode_prompt("blurry, dark", device=torch.device("cpu"))
    expected = reference_output(pipe, request, guidance_scale=2.5, negative_prompt_embeds=negative_embeds)
    assert_same_image(ours(engine, request), expected)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_kv_model_matches_diffusers_kv_pipeline(engines, pipelines, count):
    engine = engines[Variant.KV]
    images = [random_image(64 + 16 * i, 96, seed=i) for i in range(count)]
    request = build_request(engine.spec, prompt="a knight", images=images, width=96, height=64, seed=5)
    assert_same_image(ours(engine, request), reference_output(pipelines[Variant.KV], request))


def test_image_i_of_a_request_is_diffusers_image_with_seed_plus_i(engine, spec, pipelines):
    request = build_request(spec, prompt="three kittens", width=64, height=64, seed=20, num_images=3)
    images = engine.generate([request], output="float")[0].images
    expected = pipelines[Variant.DISTILLED](
        prompt=request.prompt,
        height=64,
        width=64,
        num_inference_steps=4,
        num_images_per_prompt=3,
        generator=[cpu_generator(20 + i) for i in range(3)],
        output_type="np",
    ).images
    for actual, wanted in zip(images, expected, strict=True):
        assert_same_image(actual, wanted)


def test_outputs_respond_to_seed_prompt_and_references(engine, spec):
    """The parity checks above would be empty if the tiny model ignored its inputs."""
    base = dict(prompt="a red door", width=64, height=64, seed=1)
    image = ours(engine, build_request(spec, **base))
    assert np.abs(image - ours(engine, build_request(spec, **{**base, "seed": 2}))).max() > 0.1
    assert np.abs(image - ours(engine, build_request(spec, **{**base, "prompt": "a blue door"}))).max() > 1e-3
    edited = ours(engine, build_request(spec, **base, images=[random_image(64, 64)]))
    assert np.abs(image - edited).max() > 1e-3


@pytest.mark.parametrize("mode", ["RGBA", "P", "L"])
def test_non_rgb_references_are_prepared_like_diffusers(engine, spec, pipelines, mode):
    image = random_image(1200, 900).convert(mode)  # over 1 MP: resized in its own mode, then made RGB
    request = build_request(spec, prompt="recolour", images=[image], seed=6)
    assert_same_image(ours(engine, request), reference_output(pipelines[Variant.DISTILLED], request))
