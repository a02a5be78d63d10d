"""Batches: same-shape requests share one run without changing anyone's pixels; other shapes still run."""

import numpy as np

from kleinserve.models import Variant
from kleinserve.request import build_request

from support.images import random_image


def _alone(engine, request):
    return engine.generate([request])[0].images


def test_a_request_is_identical_alone_or_batched_with_others(engine, spec):
    target = build_request(spec, prompt="a quiet harbour", width=96, height=64, seed=1, num_images=2)
    others = [
        build_request(spec, prompt="something else entirely, much longer " * 5, width=96, height=64, seed=9),
        build_request(spec, prompt="ünïcødé ✓ 猫", width=96, height=64, seed=1, num_images=3),
    ]
    batched = engine.generate([others[0], target, others[1]])
    for alone_image, batched_image in zip(_alone(engine, target), batched[1].images, strict=True):
        np.testing.assert_array_equal(alone_image, batched_image)
    for other, result in zip(others, [batched[0], batched[2]], strict=True):
        for alone_image, batched_image in zip(_alone(engine, other), result.images, strict=True):
            np.testing.assert_array_equal(alone_image, batched_image)


def test_edits_with_the_same_reference_layout_batch_without_changing_pixels(engines):
    for variant in (Variant.DISTILLED, Variant.KV):
        engine = engines[variant]
        first = build_request(engine.spec, prompt="paint it", images=[random_image(80, 64, 1)], seed=3)
        second = build_request(engine.spec, prompt="sketch it", images=[random_image(80, 64, 2)], seed=4)
        together = engine.generate([first, second])
        np.testing.assert_array_equal(together[0].images[0], _alone(engine, first)[0])
        np.testing.assert_array_equal(together[1].images[0], _alone(engine, second)[0])


def test_image_i_equals_image_0_of_the_same_request_with_seed_plus_i(engine, spec):
    many = build_request(spec, prompt="a tree", width=64, height=64, seed=100, num_images=3)
    images = engine.generate([many])[0].images
    for i in range(3):
        single = build_request(spec, prompt="a tree", width=64, height=64, seed=100 + i)
        np.testing.assert_array_equal(images[i], _alone(engine, single)[0])


def test_mixed_shapes_in_one_call_are_all_served_in_order(engine, spec):
    requests = [
        build_request(spec, prompt="wide", width=128, height=64, seed=1),
        build_request(spec, prompt="tall", width=64, height=128, seed=2),
        build_request(spec, prompt="wide again", width=128, height=64, seed=3),
        build_request(spec, prompt="more steps", width=128, height=64, steps=6, seed=4),
        build_request(spec, prompt="edit", images=[random_image(96, 80)], seed=5, num_images=2),
    ]
    results = engine.generate(requests)
    assert [r.seed for r in results] == [1, 2, 3, 4, 5]
    for request, result in zip(requests, results, strict=True):
        assert len(result.images) == request.num_images
        for image in result.images:
            assert image.shape == (request.height, request.width, 3) and image.dtype == np.uint8
        assert set(result.timings) == {"text", "references", "denoise", "decode"}
        np.testing.assert_array_equal(result.images[0], _alone(engine, request)[0])


def test_progress_callback_reports_every_step_of_every_batch(engine, spec):
    requests = [
        build_request(spec, prompt="a", width=64, height=64, steps=5, seed=1),
        build_request(spec, prompt="b", width=80, height=64, steps=4, seed=2),
        build_request(spec, prompt="c", width=64, height=64, steps=5, seed=3),
    ]
    events = []
    engine.generate(requests, on_step=events.append)
    by_batch = {}
    for event in events:
        by_batch.setdefault(event.request_indices, []).append((event.step, event.total_steps))
    assert by_batch == {(0, 2): [(s, 5) for s in range(1, 6)], (1,): [(s, 4) for s in range(1, 5)]}


def test_batches_are_split_at_the_engine_limit(engine, spec):
    requests = [
        build_request(spec, prompt=f"p{i}", width=64, height=64, seed=i, num_images=3) for i in range(4)
    ]
    events = []
    results = engine.generate(requests, on_step=events.append)
    assert sorted({e.request_indices for e in events}) == [(0, 1), (2, 3)]  # 6 images each, limit 8
    assert [len(r.images) for r in results] == [3, 3, 3, 3]


def test_output_types(engine, spec):
    request = build_request(spec, prompt="x", width=64, height=80, seed=1)
    as_float = engine.generate([request], output="float")[0].images[0]
    as_uint8 = engine.generate([request], output="uint8")[0].images[0]
    as_pil = engine.generate([request], output="pil")[0].images[0]
    assert as_float.dtype == np.float32 and as_float.min() >= 0.0 and as_float.max() <= 1.0
    np.testing.assert_array_equal(as_uint8, (as_float * 255).round().astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(as_pil), as_uint8)
    assert as_pil.size == (64, 80)
