"""Speed levers against the reference path on the tiny model: each one, switched on, makes the same image."""

import numpy as np
import pytest

from kleinserve.engine import Engine
from kleinserve.engine.optimize import Optimizations
from kleinserve.models import resolve_model
from kleinserve.request import build_request

TOLERANCE = 1e-5


def image(engine: Engine, width: int = 64, height: int = 64) -> np.ndarray:
    request = build_request(engine.spec, prompt="a lighthouse", width=width, height=height, seed=3)
    return engine.generate([request], output="float")[0].images[0]


@pytest.mark.parametrize(
    "options",
    [
        Optimizations(attention_backend="_native_math"),
        Optimizations(compile=True),
        Optimizations(compile_decoder=True),
    ],
    ids=["attention-math", "regional-compile", "compiled-decoder"],
)
def test_a_lever_makes_the_same_image_as_the_reference_path(checkpoints, engine, options):
    optimized = Engine.load(resolve_model(str(engine.spec.source)), device="cpu", optimizations=options)
    for width, height in ((64, 64), (96, 64)):  # a second resolution: compiled code is per shape
        assert np.abs(image(optimized, width, height) - image(engine, width, height)).max() <= TOLERANCE


def test_an_attention_backend_stays_on_its_own_model(checkpoints, engine):
    """diffusers' set_attention_backend also sets a process-wide default; another model must not change."""
    before = image(engine)
    Engine.load(resolve_model(str(engine.spec.source)), device="cpu",
                optimizations=Optimizations(attention_backend="_native_math"))  # fmt: skip
    assert np.array_equal(image(engine), before)
