"""Speed levers against the reference path on the tiny model: each one, switched on, makes the same image."""

import numpy as np
import pytest
import torch

from kleinserve.engine import Engine
from kleinserve.engine.optimize import Optimizations, check_attention_backend
from kleinserve.service.engine_startup import engine_config
from kleinserve.engine.warmup import warmup_plan
from kleinserve.errors import InvalidRequest
from kleinserve.models import resolve_model
from kleinserve.request import build_request
from kleinserve.settings import Settings

TOLERANCE = 1e-5


def image(engine: Engine, width: int = 64, height: int = 64) -> np.ndarray:
    request = build_request(engine.spec, prompt="a lighthouse", width=width, height=height, seed=3)
    return engine.generate([request], output="float")[0].images[0]


@pytest.mark.parametrize(
    "options",
    [Optimizations(attention_backend="_native_math"), Optimizations(compile=True)],
    ids=["attention-math", "regional-compile"],
)
def test_a_lever_makes_the_same_image_as_the_reference_path(checkpoints, engine, options):
    optimized = Engine.load(resolve_model(str(engine.spec.source)), device="cpu", optimizations=options)
    for width, height in ((64, 64), (96, 64)):  # a second resolution: compiled code is per shape
        assert np.abs(image(optimized, width, height) - image(engine, width, height)).max() <= TOLERANCE


def test_levers_default_by_device_and_unknown_backends_are_refused():
    assert not Optimizations.for_device(torch.device("cpu")).compile
    assert Optimizations.for_device(torch.device("cuda")).compile
    assert not Optimizations.for_device(torch.device("cuda"), compile=False).compile
    with pytest.raises(InvalidRequest, match="--attention-backend"):
        check_attention_backend("fastest-please")


def test_compiling_warms_the_common_sizes_and_a_batch(tmp_path):
    def plan(**fields):
        settings = Settings(data_dir=tmp_path, device="cpu", safety_checker=False, **fields)
        return warmup_plan(engine_config(settings))

    assert plan() == [(256, 256, 1)]
    compiled = plan(compile=True)
    assert (1024, 1024, 1) in compiled and compiled[-1] == (512, 512, 2)  # batches of 2+ after every size
    assert plan(warmup_sizes=("512x384",)) == [(512, 384, 1)]
    assert plan(compile=True, max_batch_images=1) == [(w, h, 1) for w, h, _ in compiled[:-1]]


def test_an_attention_backend_stays_on_its_own_model(checkpoints, engine):
    """diffusers' set_attention_backend also sets a process-wide default; another model must not change."""
    before = image(engine)
    Engine.load(resolve_model(str(engine.spec.source)), device="cpu",
                optimizations=Optimizations(attention_backend="_native_math"))  # fmt: skip
    assert np.array_equal(image(engine), before)
